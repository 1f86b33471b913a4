"""Imports every command module so that each registers on the app."""
from saeforge.cli import train  # noqa: F401
