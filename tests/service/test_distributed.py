"""The distributed mode end to end: the API on a real socket, a real Redis, real Celery worker processes
(``scanner worker``) and PostgreSQL.  A worker killed mid-batch loses nothing and duplicates nothing; a Redis
restart delays work but loses none."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from scanner.analysis.celery_app import ANALYSE_TASK, make_celery
from scanner.db import keys, migrate, queries
from scanner.db.models import Image, ScanItem, Verdict
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from scanner.versions import served_versions
from tests.support.api import http, start_api, upload
from tests.support.distributed import distributed_settings, wait_done
from tests.support.images import random_png
from tests.support.services import RedisServer, WorkerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow  # Celery worker processes, a Redis restart


def test_submit_then_read_the_verdict_through_a_worker(
    tmp_path: Path, postgres_url: str, broker_url: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    settings = distributed_settings(tmp_path, postgres_url, broker_url)
    api = start_api(settings)
    try:
        start_worker(settings)
        key = api.new_key()
        reply = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(101), random_png(102), b"garbage"))
        assert reply.status == 202
        done = wait_done(api, key, reply.json()["id"])
        assert [item["state"] for item in done["items"]] == ["done", "done", "failed"]
        assert all(item["verdict"]["model_version"] == done["model_version"] for item in done["items"][:2])
        assert http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(101))).status == 201
        # /healthz reports its background probe's last look (checked_s_ago): wait for one after the scan settled.
        health = wait_for(
            lambda: (h := http("GET", f"{api.base}/healthz").json())["oldest_pending_s"] is None and h,
            30,
            0.2,
            "a health probe after the scan settled",
        )
        assert health == {**health, "status": "ok", "mode": "distributed", "broker": True, "oldest_pending_s": None}
    finally:
        api.stop()


def _record_scan(settings: Settings, images: list[bytes]) -> list[int]:
    """Store a scan of ``images`` as the API would, without an API (and so without its relay)."""
    db = make_sessionmaker(make_engine(settings.db_url))
    versions = served_versions(settings)
    with transaction(db) as session:
        tenant = keys.get_or_create_tenant(session, "acme").id
        scan = queries.new_scan(session, tenant, "api", None, versions.model_version, versions.calibration_version)
        items = [queries.NewItem(hashlib.sha256(data).hexdigest(), data, "PNG", 96, 96) for data in images]
        return queries.add_items(session, scan, items)


def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, postgres_url: str, broker_url: str, start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    """Celery's own redelivery, with no relay anywhere (no API runs): the message comes back only because it is
    acknowledged late and rejected when its worker is lost (acks_late, reject_on_worker_lost)."""
    settings = distributed_settings(tmp_path, postgres_url, broker_url, batch_size=64)
    migrate.upgrade(settings.db_url)
    db = make_sessionmaker(make_engine(postgres_url))
    worker = start_worker(settings)
    images = [random_png(200 + i, (96, 96)) for i in range(12)]  # few: after a lost worker they go one at a time
    image_ids = _record_scan(settings, images)
    versions = served_versions(settings)
    make_celery(settings).send_task(
        ANALYSE_TASK,
        args=[image_ids],
        kwargs={"model_version": versions.model_version, "calibration_version": versions.calibration_version},
    )

    def batch_started() -> bool:  # attempts are committed just before the engine runs
        with db() as session:
            started = session.scalar(select(func.count()).where(Image.attempts > 0))
            return started == len(images) and session.scalar(select(func.count(Verdict.id))) == 0

    wait_for(batch_started, 120, 0.01, "the batch to start")
    (child,) = worker.children()
    os.kill(child, signal.SIGKILL)

    def all_done() -> bool:
        with db() as session:
            return session.scalar(select(func.count()).where(ScanItem.state == "pending")) == 0

    try:
        wait_for(all_done, 240, 0.2, "the redelivered batch to finish")
    except AssertionError as err:
        raise AssertionError(f"{err}\nworker log:\n{worker.log_text()[-4000:]}") from None
    with db() as session:
        assert session.scalar(select(func.count(Verdict.id))) == len(images)  # one verdict per image
        assert session.scalar(select(func.max(Image.attempts))) == 0
    assert "WorkerLostError" in worker.log_text() or "signal 9" in worker.log_text()


def test_redis_restart_delays_work_but_loses_none(
    tmp_path: Path,
    postgres_url: str,
    redis_server: RedisServer,
    broker_url: str,
    start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = distributed_settings(tmp_path, postgres_url, broker_url)
    api = start_api(settings)
    try:
        start_worker(settings)
        key = api.new_key()
        first = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(301))).json()["id"]
        wait_done(api, key, first)

        redis_server.stop()
        wait_for(lambda: http("GET", f"{api.base}/healthz").json()["broker"] is False, 30, what="Redis down")
        # Accepted while the broker is down: kept in the database's outbox.
        reply = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(302), random_png(303)))
        assert reply.status == 202
        second = reply.json()["id"]
        redis_server.start()

        done = wait_done(api, key, second, timeout=180)  # the relay hands it over; the worker reconnected
        assert done["counts"]["done"] == 2
        # And the worker keeps consuming new work after the reconnect.
        third = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(304))).json()["id"]
        wait_done(api, key, third, timeout=120)
    finally:
        if redis_server.process is None:
            redis_server.start()
        api.stop()


def test_messages_lost_with_redis_are_handed_over_again(
    tmp_path: Path,
    postgres_url: str,
    redis_server: RedisServer,
    broker_url: str,
    start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    """Redis here keeps nothing on disk: a restart drops queued messages.  Work handed over longer than
    ``requeue_after_s`` ago and still pending is handed over again."""
    settings = distributed_settings(tmp_path, postgres_url, broker_url, requeue_after_s=3.0)
    api = start_api(settings)
    try:
        key = api.new_key()
        scan_id = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(401), random_png(402))).json()["id"]
        redis_server.stop()  # no worker has run: the queued message dies with the server
        redis_server.start()
        start_worker(settings)
        assert wait_done(api, key, scan_id, timeout=120)["counts"]["done"] == 2
    finally:
        if redis_server.process is None:
            redis_server.start()
        api.stop()
