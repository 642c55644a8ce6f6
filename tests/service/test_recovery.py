"""Recovery of the distributed mode, with real Redis, Celery worker processes and PostgreSQL, and the relay's
requeue fallback (``requeue_after_s``) left at its default of 600 s, so that only a prompt recovery passes:
a worker killed with -9 as a whole, a Redis restart that loses the queue, a broker that never answers.

Each recovery test prints how long the images waited after the broker or the worker came back (run with -s).
The waits in ``wait_for`` are generous limits for a busy machine, far below the 600 s fallback."""

from __future__ import annotations

import asyncio
import datetime as dt
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

from scanner.api.health import PROBE_S, PROBE_TIMEOUT_S
from scanner.db.models import Image, Scan, ScanItem, utcnow
from scanner.db.session import make_engine, make_sessionmaker
from scanner.settings import Settings
from tests.support.api import http, start_api, upload
from tests.support.distributed import distributed_settings, wait_done
from tests.support.images import random_png
from tests.support.services import RedisServer, WorkerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow  # Celery workers killed and Redis restarted, waits of seconds by design

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
        images = [random_png(500 + i, (96, 96)) for i in range(24)]
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
        images = upload(random_png(601), random_png(602), random_png(603))
        scan_id = http("POST", f"{api.base}/v1/scans", key, data=images).json()["id"]
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
    age /healthz reports is the scan's whole age across those hand-overs (it once restarted from each of them).
    /healthz answers from its last probe, so the age lies between the scan's ages at the latest and the earliest
    moment that probe can have been made (``checked_s_ago`` back, less at most ``PROBE_TIMEOUT_S`` and a period)."""
    settings = distributed_settings(tmp_path, postgres_url, broker_url, requeue_after_s=1.0)
    api = start_api(settings)
    try:
        key = api.new_key()
        http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(701)))
        engine = make_engine(postgres_url)
        sessions = make_sessionmaker(engine)

        def handed_over_at() -> dt.datetime | None:
            with sessions() as session:
                return session.scalar(select(func.max(ScanItem.enqueued_at)))

        with sessions() as session:
            submitted = session.scalar(select(Scan.created_at))
        lag_s = PROBE_TIMEOUT_S + PROBE_S  # the most a probe's reading can precede the time it was checked at

        def probed() -> tuple[dt.datetime, float, dt.datetime]:
            """(the earliest and the latest moment of the probe /healthz answers from, the age it reports)"""
            before = utcnow()
            health = http("GET", f"{api.base}/healthz").json()
            after, ago = utcnow(), dt.timedelta(seconds=health["checked_s_ago"])
            slack = dt.timedelta(milliseconds=1)  # checked_s_ago is rounded to the millisecond
            return before - ago - dt.timedelta(seconds=lag_s) - slack, health["oldest_pending_s"], after - ago + slack

        def age_at(moment: dt.datetime) -> float:
            return (moment - submitted).total_seconds()

        wait_for(handed_over_at, 30, 0.1, "the first hand-over")
        earliest, first, latest = wait_for(lambda: (p := probed())[1] is not None and p, 30, 0.2, "a probe of it")
        assert age_at(earliest) <= first <= age_at(latest)
        # A hand-over more than lag_s (and a second) after the submission, then a probe made after it: an age
        # counted from the latest hand-over would then be below the bracket.
        wait_for(lambda: age_at(handed_over_at()) > lag_s + 1, 60, 0.1, "a hand-over long after the submission")
        last = handed_over_at()
        earliest, later, latest = wait_for(lambda: (p := probed())[0] > last and p, 60, 0.2, "a probe after it")
        engine.dispose()
        assert age_at(earliest) <= later <= age_at(latest)
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
                    async with session.post(f"{api.base}/v1/scans", data=upload(random_png(seed))) as reply:
                        return reply.status

                return list(await asyncio.gather(*(post(800 + i) for i in range(4))))

        assert asyncio.run(post_four()) == [202, 202, 202, 202]
        wait_for(lambda: http("GET", f"{api.base}/healthz").json()["broker"] is False, 30, what="Redis down")
    finally:
        api.stop()
