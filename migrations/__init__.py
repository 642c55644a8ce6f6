"""Alembic migrations of the scanner database (``scanner db upgrade``)."""
