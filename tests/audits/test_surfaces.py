"""The audits through their surfaces: the ``scanner audit`` console script in subprocesses, the API routes with
tenant isolation, and a fast schedule fired by a real Celery beat + worker + Redis."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from scanner.audits.store import LIVE
from scanner.db.models import AuditRun
from scanner.db.session import make_engine, make_sessionmaker
from scanner.settings import Settings
from tests.support.api import http, start_api
from tests.support.audit_sites import Site
from tests.support.commands import REPO, SCANNER
from tests.support.services import WorkerProcess, service_env
from tests.support.waiting import wait_for


def scanner(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    env.update(
        SCANNER_DATA_DIR=str(data_dir), SCANNER_ENGINE_THREADS="1", OMP_NUM_THREADS="1", COLUMNS="200",
        SCANNER_FETCH_ALLOW_PRIVATE="true", SCANNER_FETCH_ANY_PORT="true",
    )  # fmt: skip
    return subprocess.run([SCANNER, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.browser
def test_cli_add_list_run_history_remove(tmp_path: Path, site: Site) -> None:
    added = scanner(tmp_path, "audit", "add", site.url, "--every", "6h", "--max-pages", "5", "--missed", "skip")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("audit 1:")
    cron = scanner(tmp_path, "audit", "add", "shop.example", "--cron", "0 3 * * *", "--tenant", "acme")
    assert cron.returncode == 0, cron.stderr
    bad = scanner(tmp_path, "audit", "add", "shop.example", "--cron", "every tuesday")
    assert bad.returncode == 2 and "cron" in bad.stderr

    listed = scanner(tmp_path, "audit", "list")
    assert listed.returncode == 0 and "every 6h" in listed.stdout and "0 3 * * *" in listed.stdout
    assert "acme" in listed.stdout and "skip" in listed.stdout

    ran = scanner(tmp_path, "audit", "run", "1")
    assert ran.returncode == 0, ran.stderr
    assert "images 3" in ran.stdout
    history = scanner(tmp_path, "audit", "history", "1")
    assert history.returncode == 0, history.stderr
    for column in ("run", "started", "status", "pages", "images", "flagged", "newly flagged", "gone", "changed"):
        assert column in history.stdout
    assert "done" in history.stdout

    assert scanner(tmp_path, "audit", "remove", "1").returncode == 0
    assert scanner(tmp_path, "audit", "history", "1").returncode == 1
    assert "every 6h" not in scanner(tmp_path, "audit", "list").stdout


@pytest.mark.browser
def test_api_routes_are_tenant_scoped(settings: Settings) -> None:
    api = start_api(settings)
    try:
        mine, theirs = api.new_key("a", "acme"), api.new_key("b", "globex")
        reader = api.new_key("r", "acme", scopes=("reports:read",))
        base = api.base + "/v1/audits"
        body = {"start_url": "http://127.0.0.1:9/", "every": "6h", "webhook_url": "http://127.0.0.1:9/hook"}
        assert http("POST", base, mine, json=body).json()["code"] == "invalid_body"  # a webhook needs its secret
        assert http("POST", base, mine, json={"start_url": "http://x/", "cron": "bad"}).json()["code"] == (
            "invalid_schedule"
        )
        assert http("POST", base, reader, json={"start_url": "http://x/", "every": "1h"}).status == 403
        created = http("POST", base, mine, json={**body, "webhook_secret": "s3cret-s3cret"})
        assert created.status == 201, created.body
        audit = created.json()
        assert audit["schedule"] == "every 6h" and "webhook_secret" not in audit

        assert [a["id"] for a in http("GET", base, reader).json()["items"]] == [audit["id"]]
        assert http("GET", base, theirs).json()["items"] == []
        runs = f"{base}/{audit['id']}/runs"
        for method, url in (("GET", runs), ("POST", runs), ("DELETE", f"{base}/{audit['id']}")):
            reply = http(method, url, theirs)
            assert reply.status == 404 and reply.json()["code"] == "audit_not_found", (method, url)
        assert http("GET", runs, mine).json()["items"] == []  # the other tenant started nothing

        started = http("POST", runs, mine)
        assert started.status == 202 and started.json()["status"] == "queued"
        again = http("POST", runs, mine)
        assert again.status == 409 and again.json()["code"] == "already_running"
        finished = wait_for(
            lambda: [r for r in http("GET", runs, reader).json()["items"] if r["status"] not in LIVE], 120
        )
        assert finished[0]["status"] == "failed" and "reached no page" in finished[0]["error"]
        assert http("DELETE", f"{base}/{audit['id']}", mine).status == 204
        assert http("GET", runs, mine).status == 404
    finally:
        api.stop()


@pytest.mark.browser
def test_beat_and_worker_run_a_fast_schedule(tmp_path: Path, redis_server: Any, site: Site) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", broker_url=f"redis://127.0.0.1:{redis_server.port}/14", engine_threads=1
    )
    added = scanner(settings.data_dir, "audit", "add", site.url, "--every", "2s", "--max-pages", "2")
    assert added.returncode == 0, added.stderr
    log = tmp_path / "worker.log"
    env = {**service_env(settings), "SCANNER_FETCH_ALLOW_PRIVATE": "true", "SCANNER_FETCH_ANY_PORT": "true"}
    process = subprocess.Popen(
        [SCANNER, "worker", "--concurrency", "1", "--beat", "--audit-tick", "1"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    worker = WorkerProcess(process, log)
    engine = make_engine(settings.db_url)
    try:
        sessions = make_sessionmaker(engine)

        def done_runs() -> list[AuditRun]:
            with sessions() as session:
                return list(session.scalars(select(AuditRun).where(AuditRun.status == "done")))

        started = time.monotonic()
        runs = wait_for(lambda: done_runs() or process.poll() is not None, 180, 0.5, "a scheduled run")
        assert process.poll() is None, worker.log_text()[-3000:]
        assert runs[0].trigger == "schedule" and runs[0].images == 3, worker.log_text()[-3000:]
        assert time.monotonic() - started < 180
    finally:
        worker.stop()
        engine.dispose()
