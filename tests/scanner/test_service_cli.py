"""The service commands as users run them, in subprocesses: settings from the environment and a TOML file,
`scanner db`, `scanner keys`, `scanner serve` on a real port, and clear refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from scanner.db import keys, migrate
from scanner.db.session import make_engine, make_sessionmaker
from scanner.settings import Settings
from tests.support.servers import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow  # the scanner command in subprocesses, scanner serve among them

SCANNER = str(Path(sys.executable).with_name("scanner"))


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    environment.update(SCANNER_DATA_DIR=str(tmp_path), **env)
    return subprocess.run([SCANNER, *args], env=environment, capture_output=True, text=True, timeout=120)


def test_settings_from_environment_file_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SCANNER_")]:
        monkeypatch.delenv(name)
    settings_file = tmp_path / "scanner.toml"
    settings_file.write_text('port = 9999\nbatch_size = 16\ncors_origins = ["https://admin.example"]\n')
    monkeypatch.setenv("SCANNER_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("SCANNER_BATCH_SIZE", "32")  # the environment beats the file
    monkeypatch.setenv("SCANNER_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    assert (settings.port, settings.batch_size, settings.cors_origins) == (9999, 32, ["https://admin.example"])
    assert settings.db_url == f"sqlite:///{tmp_path / 'data' / 'scanner.db'}" and settings.embedded
    monkeypatch.setenv("SCANNER_BROKER_URL", "redis://127.0.0.1:6379/3")
    assert Settings().result_backend == "redis://127.0.0.1:6379/3" and not Settings().embedded


def test_invalid_settings_are_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    result = run(tmp_path, "db", "current", SCANNER_BATCH_SIZE="zero")
    assert result.returncode == 2 and "invalid settings" in result.stderr and "batch_size" in result.stderr
    missing = run(tmp_path, "db", "current", SCANNER_SETTINGS_FILE=str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


def test_db_upgrade_then_keys_create_list_revoke(tmp_path: Path) -> None:
    upgraded = run(tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0 and f"schema revision: {migrate.head_revision()}" in upgraded.stdout
    created = run(
        tmp_path,
        "keys",
        "create",
        "--name",
        "ci",
        "--tenant",
        "acme",
        "--scope",
        "reports:read",
        "--expires-in",
        "30d",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    new = json.loads(created.stdout)
    assert new["key"].startswith("rsk_") and new["scopes"] == ["reports:read"] and new["expires_at"]
    sessions = make_sessionmaker(make_engine(Settings(data_dir=tmp_path).db_url))
    with sessions() as session:
        assert keys.authenticate(session, new["key"]).id == new["id"]
    listed = run(tmp_path, "keys", "list")
    assert new["id"] in listed.stdout and new["key"] not in listed.stdout and "active" in listed.stdout
    assert run(tmp_path, "keys", "revoke", new["id"]).returncode == 0
    assert "revoked" in run(tmp_path, "keys", "list").stdout
    with sessions() as session, pytest.raises(keys.AuthError) as refused:
        keys.authenticate(session, new["key"])
    assert refused.value.code == "revoked_key"
    assert run(tmp_path, "keys", "revoke", "000000000000").returncode == 1
    bad_scope = run(tmp_path, "keys", "create", "--name", "x", "--scope", "admin")
    assert bad_scope.returncode == 2 and "unknown scopes" in bad_scope.stderr


def test_worker_needs_a_broker(tmp_path: Path) -> None:
    result = run(tmp_path, "worker")
    assert result.returncode == 2 and "SCANNER_BROKER_URL" in result.stderr


def test_serve_embedded_answers_on_its_port_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    environment.update(SCANNER_DATA_DIR=str(tmp_path), SCANNER_ENGINE_THREADS="1", OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [SCANNER, "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def healthy() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    return json.load(reply)
            except OSError:
                return None

        health = wait_for(healthy, 120, 0.2, "scanner serve")
        assert health["mode"] == "embedded" and health["status"] == "ok"
        assert (tmp_path / "scanner.db").exists()  # the embedded database migrated itself
    finally:
        server.send_signal(signal.SIGINT)
        started = time.monotonic()
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0 and time.monotonic() - started < 30
    assert f"http://127.0.0.1:{port}" in output and "embedded" in output
