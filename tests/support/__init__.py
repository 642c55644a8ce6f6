"""Helpers shared by the test packages: image makers, servers, database fixtures. Tests import from here, never
from another test module."""

import pkgutil

import pytest

# Helpers here assert too: rewritten as test modules are, their failures show the values, not just the line.
pytest.register_assert_rewrite(*(f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__)))
