"""``/healthz`` against real parts: a real Redis, a real ``scanner worker`` and PostgreSQL.  It must show that work
is being consumed (a killed worker makes the ``workers`` component degraded), keep answering whatever is down
(Redis stopped), and say which part is degraded."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from scanner.settings import Settings
from tests.support.api import http, start_api
from tests.support.distributed import distributed_settings
from tests.support.services import RedisServer, WorkerProcess
from tests.support.waiting import wait_for

GENEROUS = aiohttp.ClientTimeout(
    total=30
)  # a client timeout far above what a health check may take: the body is asserted, not the time


def health(base: str) -> dict:
    return http("GET", f"{base}/healthz", timeout=GENEROUS).json()


def test_a_killed_worker_makes_health_degraded(
    tmp_path: Path, postgres_url: str, broker_url: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    settings = distributed_settings(tmp_path, postgres_url, broker_url)
    api = start_api(settings)
    try:
        worker = start_worker(settings)
        live = wait_for(lambda: (h := health(api.base))["status"] == "ok" and h, 60, 0.2, "a worker heartbeat")
        assert live["workers"] >= 1 and live["components"]["workers"] == "ok" and live["broker"] is True

        for pid in [*worker.children(), worker.process.pid]:  # every process of the worker, as in an outage
            os.kill(pid, signal.SIGKILL)
        worker.process.wait(10)
        dead = wait_for(
            lambda: (h := health(api.base))["components"]["workers"] == "degraded" and h, 60, 0.2, "a degraded worker"
        )
        assert dead["status"] == "degraded" and dead["workers"] == 0
        # The other parts are fine: health names the part that is not.
        assert {**dead["components"], "workers": "ok"} == {
            "database": "ok",
            "broker": "ok",
            "workers": "ok",
            "queue": "ok",
        }
    finally:
        api.stop()


def test_health_answers_while_redis_is_down(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer, broker_url: str
) -> None:
    settings = distributed_settings(tmp_path, postgres_url, broker_url)
    api = start_api(settings)
    try:
        redis_server.stop()
        down = wait_for(
            lambda: (h := health(api.base))["components"]["broker"] == "down" and h, 60, 0.2, "the broker down"
        )
        assert down["status"] == "degraded" and down["broker"] is False and down["database"] is True
        assert down["components"]["workers"] == "unknown" and down["workers"] is None
        # Still answering, call after call, while Redis stays down.
        again = [http("GET", f"{api.base}/healthz", timeout=GENEROUS) for _ in range(5)]
        assert [reply.status for reply in again] == [200] * 5
        assert all(reply.json()["components"]["broker"] == "down" for reply in again)
    finally:
        if redis_server.process is None:
            redis_server.start()
        api.stop()
