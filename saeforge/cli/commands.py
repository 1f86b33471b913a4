"""Imports every command module so that each registers on the app."""
