"""``/healthz``: the state of each part the service needs, probed in the background and answered from memory.

Why in the background: a probe of a part that is down waits for its timeout (a Redis that is gone, a database
that does not answer), and a health check that waits with it is no use to a balancer; so a task probes every
``PROBE_S`` seconds, each probe bounded by ``PROBE_TIMEOUT_S`` and never started twice while one still runs,
and the handler reads the last results.

What "ok" means: the database answers, the broker answers, at least one worker process is alive (its
heartbeat key in Redis: ``scanner.analysis.heartbeat``; the analysis thread in the embedded mode) and no
pending image waits longer than the requeue interval.  Each part has its own entry in ``components``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy import text

from scanner.analysis import heartbeat
from scanner.api.context import Services, services
from scanner.db import queries
from scanner.db.session import transaction

log = logging.getLogger(__name__)
PROBE_S = 1.0
PROBE_TIMEOUT_S = 3.0


@dataclass
class Snapshot:
    database: bool = False
    oldest_pending_s: float | None = None
    broker: bool | None = None
    workers: int | None = None  # live worker processes; None when unknown (the broker does not answer)
    checked_at: float = field(default_factory=time.monotonic)


class HealthMonitor:
    """Probes the database, the broker and the workers every ``PROBE_S`` seconds; ``snapshot`` is the latest."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.snapshot = Snapshot()
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="health")  # never the requests' threads
        self._running: dict[str, Future[Any]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.probe_once()  # the first answer is a real one
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def probe_once(self) -> None:
        (database, oldest), (broker, workers) = await asyncio.gather(
            self._bounded("database", self._probe_database, (False, None)),
            self._probe_broker(),
        )
        self.snapshot = Snapshot(database, oldest, broker, workers)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                await self.probe_once()
            except Exception:  # noqa: BLE001 - the monitor must outlive any probe's failure
                log.exception("health probe failed")

    async def _bounded(self, name: str, probe: Callable[[], Any], failed: Any) -> Any:
        """``probe()`` in a health thread, or ``failed`` when it raises or outlasts ``PROBE_TIMEOUT_S``; a probe
        still running from an earlier round is not started again (a hung database holds one thread, not all)."""
        running = self._running.get(name)
        if running is None or running.done():
            running = self._running[name] = self._threads.submit(probe)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(running), PROBE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - any failure or timeout means "not answering"
            return failed

    def _probe_database(self) -> tuple[bool, float | None]:
        with transaction(self.svc.sessions) as session:  # type: ignore[arg-type]
            session.execute(text("SELECT 1"))
            return True, queries.oldest_pending_age_s(session)

    async def _probe_broker(self) -> tuple[bool | None, int | None]:
        dispatcher, url = self.svc.dispatcher, self.svc.settings.broker_url or ""
        if not url.startswith(("redis://", "rediss://")):  # embedded (the analysis thread), or not Redis
            alive = await dispatcher.healthy() if dispatcher else None
            return alive, (1 if alive else 0) if self.svc.settings.embedded else None
        return await self._bounded("broker", lambda: _redis_state(url), (False, None))


def _redis_state(url: str) -> tuple[bool, int]:
    connection = heartbeat.client(url)
    try:
        connection.ping()
        return True, heartbeat.live_workers(connection)
    finally:
        connection.close()


MONITOR = web.AppKey("health_monitor", HealthMonitor)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(_start)  # after the services' start-up (cleanup_ctx runs first)
    app.on_shutdown.append(_stop)


async def _start(app: web.Application) -> None:
    from scanner.api.context import SERVICES

    app[MONITOR] = HealthMonitor(app[SERVICES])
    await app[MONITOR].start()


async def _stop(app: web.Application) -> None:
    if MONITOR in app:
        await app[MONITOR].stop()


def components(snapshot: Snapshot, svc: Services) -> dict[str, str]:
    """Each part's state: ok, degraded or down; ``unknown`` where a part cannot be seen (workers without a
    broker); ``not_used`` for the broker of the embedded mode."""
    embedded = svc.settings.embedded
    workers = "unknown" if snapshot.workers is None else "ok" if snapshot.workers > 0 else "degraded"
    oldest = snapshot.oldest_pending_s
    return {
        "database": "ok" if snapshot.database else "down",
        "broker": "not_used" if embedded else ("ok" if snapshot.broker else "down"),
        "workers": workers,
        "queue": "degraded" if oldest is not None and oldest > svc.settings.requeue_after_s else "ok",
    }


async def healthz(request: web.Request) -> web.Response:
    """``ok`` when every component is ok; ``degraded`` when one is not (work is not being consumed, or the broker
    is unreachable); ``down`` without a database.  Answered from the monitor's last probe."""
    svc = services(request)
    snapshot = request.app[MONITOR].snapshot
    parts = components(snapshot, svc)
    status = "ok" if all(state in ("ok", "not_used") for state in parts.values()) else "degraded"
    if not snapshot.database:
        status = "down"
    body = {
        "status": status,
        "mode": "embedded" if svc.settings.embedded else "distributed",
        "database": snapshot.database,
        "broker": snapshot.broker,
        "oldest_pending_s": snapshot.oldest_pending_s,
        "workers": snapshot.workers,
        "components": parts,
        "checked_s_ago": round(time.monotonic() - snapshot.checked_at, 3),
        "model_version": svc.versions.model_version,
        "calibration_version": svc.versions.calibration_version,
    }
    return web.json_response(body, status=503 if status == "down" else 200)
