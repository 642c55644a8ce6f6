"""Alembic migrations up and down on SQLite and PostgreSQL, and the migrated schema equals the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

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


def _populate(database_url: str) -> None:
    """One row (or a few) in every table the application writes, through its own functions: a key, a scan of
    two images, verdicts (one without a confident class, as 0005 allows), feedback, an audit with a finished
    run and its snapshot, a dead letter."""
    from scanner.audits import store
    from scanner.audits.diff import Seen
    from scanner.db import keys, queries
    from scanner.db.models import Image, utcnow
    from scanner.db.session import make_sessionmaker, transaction
    from tests.service.conftest import verdict_with_score
    from tests.support.queries import write_verdict

    engine = make_engine(database_url)
    with transaction(make_sessionmaker(engine)) as session:
        key = keys.create_key(session, "migrations", "acme")
        tenant = keys.get_or_create_tenant(session, "acme").id
        scan = queries.new_scan(session, tenant, "crawl", "https://shop.example/p", "m1", "c1")
        items = [
            queries.NewItem(f"{i:064x}", b"bytes%d" % i, "PNG", 8, 8, f"https://shop.example/{i}.png") for i in (1, 2)
        ]
        first, second = queries.add_items(session, scan, items)
        write_verdict(session, first, verdict_with_score("m1", "c1", "cat", 2.0))
        write_verdict(session, second, {**verdict_with_score("m1", "c1", "cat", 0.1), "label": None})
        queries.add_feedback(session, tenant, first, key.id, "false_flag", "m1", "c1", None, "no")
        audit = store.create_audit(session, tenant, store.AuditSpec("https://shop.example/", "every 6h"), utcnow())
        run = store.claim_run(session, audit.id, "test", "manual")
        snapshot = [Seen(f"{1:064x}", "https://shop.example/1.png", True, "cat", 2.0)]
        store.finish_run(
            session,
            run,
            {"pages": 1, "images": 1, "flagged": 1},
            snapshot,
            {"added": [], "newly_flagged": [], "gone": [], "changed": []},
        )
        queries.dead_letter(session, session.get_one(Image, second), "m1", "c1", "task", "it never finished")
    engine.dispose()


def _counts(database_url: str) -> dict[str, int]:
    engine = make_engine(database_url)
    try:
        present = set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            return {
                table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in sorted(TABLES & present)
            }
    finally:
        engine.dispose()


def test_each_downgrade_step_runs_with_rows_present(database_url: str) -> None:
    """Down one revision at a time from head to base with data in the tables, then up again: every step must
    cope with the rows (NULL labels, foreign keys, columns it drops) and keep the rows of the tables it keeps."""
    migrate.upgrade(database_url)
    _populate(database_url)
    before = _counts(database_url)
    assert all(before[table] > 0 for table in ("images", "scans", "verdicts", "audits", "audit_runs", "feedback"))
    script = ScriptDirectory.from_config(migrate.alembic_config(database_url))
    for revision in script.walk_revisions():  # head first
        target = revision.down_revision or "base"
        migrate.downgrade(database_url, target)  # type: ignore[arg-type]
        after = _counts(database_url)
        for table, count in after.items():
            assert count == before[table], f"downgrade to {target} changed the rows of {table}"
        engine = make_engine(database_url)
        assert migrate.current_revision(engine) == (None if target == "base" else target)
        engine.dispose()
    migrate.upgrade(database_url)
    _populate(database_url)
