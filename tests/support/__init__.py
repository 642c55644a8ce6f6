"""Helpers shared by the test packages: image makers, servers, database fixtures. Tests import from here, never
from another test module."""
