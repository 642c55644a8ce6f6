"""Recovery of the distributed mode, with real Redis, Celery worker processes and PostgreSQL, and the relay's
requeue fallback (``requeue_after_s``) left at its default of 600 s, so that only a prompt recovery passes:
a worker killed with -9 as a whole, a Redis restart that loses the queue, a broker that never answers.

Each recovery test prints how long the images waited after the broker or the worker came back (run with -s).
The waits in ``wait_for`` are generous limits for a busy machine, far below the 600 s fallback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from scanner.db.models import Image, ScanItem
from scanner.db.session import make_engine, make_sessionmaker
from scanner.settings import Settings
from tests.service.conftest import RedisServer, WorkerProcess, http, start_api, upload, wait_for
from tests.service.test_api import png
from tests.service.test_distributed import distributed_settings, wait_done

RECOVERY_LIMIT_S = 120.0


def _settings(tmp_path: Path, postgres_url: str, broker_url: str) -> Settings:
    return distributed_settings(tmp_path, postgres_url, broker_url, requeue_after_s=600.0, requeue_idle_s=20.0)


def test_a_worker_killed_as_a_whole_is_recovered_from_promptly(
    tmp_path: Path, postgres_url: str, broker_url: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    """kill -9 of the main worker process and its child: their messages stay unacknowledged in Redis until the
    visibility timeout (an hour); the relay sees an empty queue and no worker holding them, and hands them over."""
    settings = _settings(tmp_path, postgres_url, broker_url)
    api = start_api(settings)
    db = make_sessionmaker(make_engine(postgres_url))
    try:
        worker = start_worker(settings)
        key = api.new_key()
        images = [png(500 + i, (96, 96)) for i in range(24)]
        scan_id = http("POST", f"{api.base}/v1/scans", key, data=upload(*images)).json()["id"]

        def started() -> bool:
            with db() as session:
                return bool(session.scalar(select(func.count()).where(Image.attempts > 0)))

        wait_for(started, 120, 0.01, "the batch to start")
        for pid in [*worker.children(), worker.process.pid]:
            os.kill(pid, signal.SIGKILL)
        worker.process.wait(10)

        start_worker(settings)
        back = time.monotonic()
        done = wait_done(api, key, scan_id, timeout=RECOVERY_LIMIT_S)
        print(f"\nworker kill -9: {len(images)} images done {time.monotonic() - back:.1f} s after the worker was back")
        assert done["counts"]["done"] == len(images)
    finally:
        api.stop()


def test_a_redis_restart_that_loses_the_queue_is_recovered_from_promptly(
    tmp_path: Path,
    postgres_url: str,
    redis_server: RedisServer,
    broker_url: str,
    start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = _settings(tmp_path, postgres_url, broker_url)
    api = start_api(settings)
    try:
        key = api.new_key()
        wait_for(lambda: http("GET", f"{api.base}/healthz").json()["broker"], 30, what="the relay to see Redis")
        scan_id = http("POST", f"{api.base}/v1/scans", key, data=upload(png(601), png(602), png(603))).json()["id"]
        wait_for(lambda: _all_enqueued(postgres_url), 30, 0.1, "the scan to be handed over")
        redis_server.stop()  # no worker has run yet: the queued message dies with the server
        redis_server.start()
        back = time.monotonic()
        start_worker(settings)
        done = wait_done(api, key, scan_id, timeout=RECOVERY_LIMIT_S)
        print(f"\nRedis restart: 3 images done {time.monotonic() - back:.1f} s after Redis was back")
        assert done["counts"]["done"] == 3
    finally:
        if redis_server.process is None:
            redis_server.start()
        api.stop()


def _all_enqueued(database_url: str) -> bool:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            waiting = session.scalar(
                select(func.count()).where(ScanItem.state == "pending", ScanItem.enqueued_at.is_(None))
            )
            return waiting == 0
    finally:
        engine.dispose()


def test_health_reports_the_true_age_of_the_oldest_pending_image(
    tmp_path: Path, postgres_url: str, broker_url: str
) -> None:
    """No worker: the relay hands the pending image over again and again (``requeue_after_s`` of 1 s), and the
    age /healthz reports keeps growing across those hand-overs (it once restarted from each of them)."""
    settings = distributed_settings(tmp_path, postgres_url, broker_url, requeue_after_s=1.0)
    api = start_api(settings)
    try:
        key = api.new_key()
        http("POST", f"{api.base}/v1/scans", key, data=upload(png(701)))
        engine = make_engine(postgres_url)
        sessions = make_sessionmaker(engine)

        def handed_over_at() -> object:
            with sessions() as session:
                return session.scalar(select(func.max(ScanItem.enqueued_at)))

        handed = wait_for(handed_over_at, 30, 0.1, "the first hand-over")
        first = http("GET", f"{api.base}/healthz").json()["oldest_pending_s"]
        wait_for(lambda: handed_over_at() > handed, 60, 0.1, "the relay to hand the work over again")
        engine.dispose()
        later = http("GET", f"{api.base}/healthz").json()["oldest_pending_s"]
        assert later > first
    finally:
        api.stop()


class Blackhole:
    """A TCP server that accepts connections and never answers: a broker that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        for connection in self.held:
            connection.close()
        self.sock.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    server = Blackhole()
    yield server
    server.close()


def test_submissions_are_answered_while_the_broker_hangs(
    tmp_path: Path, postgres_url: str, blackhole: Blackhole
) -> None:
    settings = distributed_settings(tmp_path, postgres_url, f"redis://127.0.0.1:{blackhole.port}/0")
    api = start_api(settings)
    try:
        key = api.new_key()

        async def post_four() -> list[int]:
            timeout = aiohttp.ClientTimeout(total=30)  # a liveness limit: a publish that hangs would exceed it
            headers = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

                async def post(seed: int) -> int:
                    async with session.post(f"{api.base}/v1/scans", data=upload(png(seed))) as reply:
                        return reply.status

                return list(await asyncio.gather(*(post(800 + i) for i in range(4))))

        assert asyncio.run(post_four()) == [202, 202, 202, 202]
        wait_for(lambda: http("GET", f"{api.base}/healthz").json()["broker"] is False, 30, what="Redis down")
    finally:
        api.stop()
