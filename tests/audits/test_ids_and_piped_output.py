"""Issue 37, item 5: audit and run ids are never reused after `audit remove` (SQLite and PostgreSQL), and piped
output keeps a long URL on one line.  Through the ``scanner`` command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scanner.audits import store
from scanner.db.session import make_engine, make_sessionmaker, transaction
from tests.support.commands import scanner

pytestmark = pytest.mark.slow  # the scanner command in subprocesses, on both databases


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ids.db'}"
    return request.getfixturevalue("postgres_url")


def _add(data_dir: Path, url: str, database_url: str | None = None) -> int:
    chosen = {"SCANNER_DATABASE_URL": database_url} if database_url else {}  # none: the data dir's own file
    added = scanner(data_dir, "audit", "add", url, "--every", "1d", "--allow-private", **chosen)
    assert added.returncode == 0, added.stderr
    return int(re.search(r"audit (\d+):", added.stdout).group(1))  # type: ignore[union-attr]


def _run(database_url: str, audit_id: int) -> int:
    """A run of the audit, ended at once (a crawl is not what this test is about)."""
    engine = make_engine(database_url)
    with transaction(make_sessionmaker(engine)) as session:
        run_id = store.claim_run(session, audit_id, "test", "manual")
        store.fail_run(session, run_id, "stopped by the test", "stopped")
    engine.dispose()
    return run_id


def test_ids_are_never_reused_after_remove(tmp_path: Path, database_url: str) -> None:
    upgraded = scanner(tmp_path, "db", "upgrade", SCANNER_DATABASE_URL=database_url, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    first = _add(tmp_path, "http://127.0.0.1:8001/", database_url)
    second = _add(tmp_path, "http://127.0.0.1:8002/", database_url)
    run = _run(database_url, second)
    for audit_id in (second, first):  # the newest first: the largest id is the one SQLite would reuse
        removed = scanner(tmp_path, "audit", "remove", str(audit_id), SCANNER_DATABASE_URL=database_url)
        assert removed.returncode == 0, removed.stderr
    third = _add(tmp_path, "http://127.0.0.1:8003/", database_url)
    assert third > second > first
    assert _run(database_url, third) > run
    history = scanner(tmp_path, "audit", "history", str(second), SCANNER_DATABASE_URL=database_url)
    assert history.returncode == 1 and f"no audit {second}" in history.stderr  # not another audit's runs


def test_piped_output_keeps_a_long_url_on_one_line(tmp_path: Path) -> None:
    url = "http://127.0.0.1:8004/" + "/".join(f"section-{n}" for n in range(30)) + "/index.html"
    assert len(url) > 300  # wider than any terminal default, and than the COLUMNS the tests set
    _add(tmp_path, url)
    listed = scanner(tmp_path, "audit", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(url in line for line in listed.stdout.splitlines()), listed.stdout
