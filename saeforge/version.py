"""The package version, importable without importing the package's lazy exports."""

__version__ = "0.1.0"
