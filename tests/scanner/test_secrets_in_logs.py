"""Credentials never reach a log line: the URLs ``scanner serve`` prints are masked, and a failing SQL statement
does not echo its bound parameters (webhook secrets, image bytes)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from scanner.db.session import make_engine
from scanner.settings import masked_url
from tests.support.commands import SCANNER


@pytest.mark.slow
def test_serve_prints_no_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    env.update(
        SCANNER_DATA_DIR=str(tmp_path),
        SCANNER_DATABASE_URL="postgresql://scanner:db-pass-1234@127.0.0.1:9/scanner",  # nothing listens on 9
        SCANNER_BROKER_URL="redis://:broker-pass-5678@127.0.0.1:9/0",
    )
    process = subprocess.Popen(
        [SCANNER, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=120)  # it fails to reach the database and exits
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    first = output.splitlines()[0]
    assert first.startswith("scanner API on"), output
    assert "***" in first
    assert "db-pass-1234" not in output and "broker-pass-5678" not in output


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://scanner:s3cret@db:5432/scans", "postgresql://scanner:***@db:5432/scans"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("sqlite:////var/lib/scanner.db", "sqlite:////var/lib/scanner.db"),
    ],
)
def test_masked_url(url: str, masked: str) -> None:
    assert masked_url(url) == masked


def test_sql_errors_do_not_show_bound_parameters(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(OperationalError) as failure, engine.connect() as connection:
            connection.execute(text("INSERT INTO no_such_table (secret) VALUES (:secret)"), {"secret": "whsec-9876"})
    finally:
        engine.dispose()
    assert "no_such_table" in str(failure.value)
    assert "whsec-9876" not in str(failure.value)
