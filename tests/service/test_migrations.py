"""Alembic migrations up and down on SQLite and PostgreSQL, and the migrated schema equals the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from scanner.db import migrate
from scanner.db.models import Base
from scanner.db.session import make_engine

TABLES = {
    "tenants",
    "api_keys",
    "sites",
    "images",
    "image_blobs",
    "scans",
    "scan_items",
    "sightings",
    "verdicts",
    "dead_letters",
    "audits",
    "audit_runs",
    "feedback",
    "audit_run_images",
    "webhook_deliveries",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrations.db'}"
    return request.getfixturevalue("postgres_url")


def test_upgrade_creates_every_table_and_matches_the_models(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert migrate.is_up_to_date(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    engine.dispose()


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.downgrade(database_url, "base")
    engine = make_engine(database_url)
    assert not TABLES & set(inspect(engine).get_table_names())
    assert migrate.current_revision(engine) is None
    migrate.upgrade(database_url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
