"""The audit schedule without Celery: ``scanner serve`` in the embedded mode ticks the database schedule itself.

Why not beat: the embedded mode has no broker, so no Celery worker could take a run.  The tick is the very one
beat runs (``scanner.audits.runner.tick``): the compare-and-set on ``next_run_at``, the run lock and the
missed-run policy are the same, so a ``scanner serve`` and a ``scanner worker --beat`` on one database still
start each slot once.  Runs execute in the server's event loop (``runner.execute_run``) and analyse with the
engine the server already loaded (``scanner.analysis.pipeline.engine_for`` is one engine per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from scanner.audits import runner, store
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_TICK_S = 5.0  # a SQLite query every few seconds costs nothing, and `--every 30s` then runs on time
STOPPED = "scanner serve stopped during the run"


class LocalScheduler:
    """Ticks the schedule every ``tick_s`` seconds and runs what it claimed, until ``stop``."""

    def __init__(self, settings: Settings, tick_s: float = DEFAULT_TICK_S) -> None:
        self.settings, self.tick_s = settings, tick_s
        self._engine = make_engine(settings.db_url)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self._engine)
        self._runs: dict[int, asyncio.Task[Any]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        # The ticker is asked to stop, not cancelled: its tick runs in a thread that a cancellation would not
        # stop, and a run claimed there after the cancel was never launched, so never failed below.
        self._stopping.set()
        if self._ticker is not None:
            with contextlib.suppress(Exception):
                await self._ticker
        runs = dict(self._runs)
        for task in runs.values():
            task.cancel()
        for task in runs.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # A run cut short would hold its lock until the lease expires; say why it ended instead.
        for run_id, task in runs.items():
            if task.cancelled():
                await asyncio.to_thread(self._fail, run_id)
        self._engine.dispose()

    async def _tick_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                started = await asyncio.to_thread(runner.tick, self.sessions, _ignore, self.tick_s)
            except Exception:  # noqa: BLE001 - a database hiccup must not end the schedule
                log.exception("audit schedule tick failed; retrying at the next tick")
                started = []
            for run_id in started:
                self._launch(run_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.tick_s)

    def _launch(self, run_id: int) -> None:
        log.info("audit run %s started by the schedule", run_id)
        task = asyncio.create_task(runner.execute_run(self.settings, run_id))
        self._runs[run_id] = task
        task.add_done_callback(lambda done, run_id=run_id: self._finished(run_id, done))

    def _finished(self, run_id: int, task: asyncio.Task[Any]) -> None:
        self._runs.pop(run_id, None)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("audit run %s ended with %s", run_id, task.exception())
        else:
            log.info("audit run %s: %s", run_id, task.result().status)

    def _fail(self, run_id: int) -> None:
        with transaction(self.sessions) as session:
            store.fail_run(session, run_id, STOPPED, "stopped")


def _ignore(run_id: int) -> None:
    """The tick's enqueue hook: the runs it claimed are launched by the caller, in the event loop."""


def scheduler_context(settings: Settings, tick_s: float = DEFAULT_TICK_S) -> Callable[[web.Application], Any]:
    """An aiohttp ``cleanup_ctx`` entry that runs the local scheduler for the application's lifetime."""

    async def context(_: web.Application) -> AsyncIterator[None]:
        scheduler = LocalScheduler(settings, tick_s)
        await scheduler.start()
        yield
        await scheduler.stop()

    return context
