"""The service tests' fixtures: a Redis database of its own per test, and Celery worker processes (``scanner
worker``) stopped when the test ends.  The servers themselves (Redis, PostgreSQL) and a throw-away PostgreSQL
database are fixtures of tests/conftest.py; the helpers are in tests/support/."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanner.settings import Settings
from tests.support.commands import REPO, SCANNER
from tests.support.services import RedisServer, WorkerProcess, service_env
from tests.support.waiting import wait_for

_redis_db = iter(range(1, 16))


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    """A Redis database of its own per test, so that no test sees another's leftover messages."""
    return f"redis://127.0.0.1:{redis_server.port}/{next(_redis_db)}"


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
        process = subprocess.Popen(
            [SCANNER, "worker", "--concurrency", "1", "--loglevel", "INFO"],
            env=service_env(settings),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        worker = WorkerProcess(process, log)
        started.append(worker)
        wait_for(lambda: "ready." in worker.log_text() or process.poll() is not None, 120, what="worker ready")
        assert process.poll() is None, f"the worker exited:\n{worker.log_text()[-3000:]}"
        return worker

    yield start
    for worker in started:
        worker.stop()
