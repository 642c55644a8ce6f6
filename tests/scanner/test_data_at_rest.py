"""The embedded database is private to its user (directory 0700, files 0600) and webhook secrets are stored
encrypted (Fernet), whatever created them: the API or ``scanner audit add``."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from scanner import secretbox
from scanner.db import migrate
from scanner.db.session import make_engine
from scanner.settings import Settings
from tests.support.api import http, start_api
from tests.support.commands import SCANNER


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_embedded_database_is_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    migrate.upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    with engine.begin() as connection:  # a write, so that SQLite has its -wal and -shm files
        connection.execute(text("INSERT INTO tenants (name, created_at) VALUES ('acme', CURRENT_TIMESTAMP)"))
        database = settings.data_dir / "scanner.db"
        assert _mode(settings.data_dir) == 0o700
        for path in (database, database.with_name("scanner.db-wal"), database.with_name("scanner.db-shm")):
            assert path.exists() and _mode(path) == 0o600, (path, oct(_mode(path)))
    engine.dispose()


def test_a_world_readable_database_of_an_earlier_version_is_made_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    migrate.upgrade(settings.db_url)
    database = settings.data_dir / "scanner.db"
    database.chmod(0o644)
    make_engine(settings.db_url).dispose()
    assert _mode(database) == 0o600


def _stored_secret(settings: Settings) -> str:
    engine = make_engine(settings.db_url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT webhook_secret FROM audits")).scalar_one()
    engine.dispose()
    return stored


@pytest.mark.slow
def test_webhook_secrets_created_through_the_api_are_encrypted(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", fetch_allow_private=True)
    api = start_api(settings)
    try:
        body = {"start_url": "http://127.0.0.1/", "every": "6h", "webhook_url": "http://127.0.0.1/hook"}
        reply = http("POST", api.base + "/v1/audits", api.new_key(), json={**body, "webhook_secret": "s3cret-s3cret"})
        assert reply.status == 201, reply.body
    finally:
        api.stop()
    stored = _stored_secret(settings)
    assert "s3cret" not in stored and stored.startswith(secretbox.TOKEN_PREFIX)
    assert secretbox.decrypt(settings, stored) == "s3cret-s3cret"
    assert _mode(settings.data_dir / secretbox.KEY_FILE) == 0o600


@pytest.mark.slow
def test_webhook_secrets_created_by_the_cli_are_encrypted_with_the_configured_key(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    env.update(SCANNER_DATA_DIR=str(tmp_path), SCANNER_SECRET_KEY=key)
    added = subprocess.run(
        [SCANNER, "audit", "add", "shop.example", "--every", "6h", "--webhook", "https://hooks.example/x",
         "--webhook-secret", "cli-secret-123"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    settings = Settings(data_dir=tmp_path, secret_key=key)
    stored = _stored_secret(settings)
    assert "cli-secret" not in stored
    assert secretbox.decrypt(settings, stored) == "cli-secret-123"
    assert not (tmp_path / secretbox.KEY_FILE).exists()  # the configured key was used, no key file made
    with pytest.raises(secretbox.SecretKeyError):
        secretbox.decrypt(Settings(data_dir=tmp_path, secret_key=Fernet.generate_key().decode()), stored)


def test_secrets_stored_before_encryption_are_still_read(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert secretbox.decrypt(settings, "plain-old-secret") == "plain-old-secret"
    assert secretbox.decrypt(settings, None) is None
