"""Alembic migrations up and down on SQLite and PostgreSQL, and the migrated schema equals the models; and the one
migration rule of every entry point: the embedded default file upgrades itself, nothing else is migrated
implicitly, and a schema ahead of the code is refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from scanner.api import create_app
from scanner.db import migrate
from scanner.db.models import Base
from scanner.db.session import make_engine
from scanner.local import LocalSubmitter
from scanner.settings import Settings

SCANNER = str(Path(sys.executable).with_name("scanner"))

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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
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
    from tests.support.queries import write_verdict
    from tests.support.verdicts import verdict_with_score

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


@pytest.mark.slow
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


# --- the one migration rule (scanner.db.migrate.open_current) ------------------------------------------------------


def _older_revision() -> str:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    head = script.get_revision(migrate.head_revision())
    assert isinstance(head.down_revision, str), "the newest migration has one parent"
    return head.down_revision


def test_the_embedded_default_file_upgrades_itself(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert migrate.migrates_itself(settings)
    engine = migrate.open_current(settings)  # no file yet: created at the newest schema
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
    migrate.downgrade(settings.db_url, _older_revision())
    migrate.open_current(settings).dispose()  # behind: upgraded again
    assert migrate.current_revision(make_engine(settings.db_url)) == migrate.head_revision()


def test_any_other_database_behind_is_refused_in_one_line_and_left_as_it_is(database_url: str, tmp_path: Path) -> None:
    """A database_url (embedded or not), and the default file of the distributed mode: never migrated implicitly."""
    named = Settings(data_dir=tmp_path / "data", database_url=database_url)
    distributed = Settings(data_dir=tmp_path / "shared", broker_url="redis://127.0.0.1:9/0")
    migrate.upgrade(database_url, _older_revision())
    for settings in (named, distributed):
        assert not migrate.migrates_itself(settings)
        with pytest.raises(migrate.SchemaOutOfDate) as refused:
            migrate.open_current(settings).dispose()
        assert "`scanner db upgrade`" in str(refused.value) and "\n" not in str(refused.value)
    assert migrate.current_revision(make_engine(database_url)) == _older_revision()
    assert migrate.current_revision(make_engine(distributed.db_url)) is None


def test_a_schema_ahead_of_the_code_is_refused_even_for_the_default_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    migrate.open_current(settings).dispose()
    engine = make_engine(settings.db_url)
    with engine.begin() as connection:  # what a newer scanner's migration leaves
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
    with pytest.raises(migrate.SchemaOutOfDate) as refused:
        migrate.open_current(settings)
    message = str(refused.value)
    assert "f00dfeedbeef" in message and f"scanner db downgrade {migrate.head_revision()}" in message
    assert migrate.current_revision(engine) == "f00dfeedbeef"


def _scanner(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    environment.update(SCANNER_DATA_DIR=str(tmp_path / "data"), SCANNER_DATABASE_URL=database_url)
    return subprocess.run([SCANNER, *args], env=environment, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_entry_points_refuse_a_named_database_behind(tmp_path: Path) -> None:
    """The API, the local submitter (crawls, audit runs), and the crawl, audit and report commands: one rule."""
    url = f"sqlite:///{tmp_path / 'named.db'}"
    settings = Settings(data_dir=tmp_path / "data", database_url=url, engine_threads=1)
    assert settings.embedded  # embedded, but not the default file: left to `scanner db upgrade`

    async def serve() -> None:
        runner = web.AppRunner(create_app(settings))
        try:
            await runner.setup()
        finally:
            await runner.cleanup()

    async def submit() -> None:
        async with LocalSubmitter(settings):
            pass

    for start in (serve, submit):
        with pytest.raises(migrate.SchemaOutOfDate, match="scanner db upgrade"):
            asyncio.run(start())
    for command in (["crawl", "http://127.0.0.1:9/"], ["audit", "list"], ["report"]):
        result = _scanner(tmp_path, url, *command)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "`scanner db upgrade`" in lines[0], (command, result)
    assert migrate.current_revision(make_engine(url)) is None
