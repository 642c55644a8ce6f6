"""Handing pending images to the analysis: Celery (distributed) or a thread in this process (embedded).

Both work from the database as an outbox: a scan's pending items are marked ``enqueued_at`` once handed over,
and a relay loop hands over again whatever was never handed over (broker down at submission) or was handed
over ``requeue_after_s`` ago and is still pending (a broker restarted without persistence lost it).  Verdict
writes are idempotent, so handing an image over twice costs time, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from scanner.db import queries
from scanner.db.models import utcnow
from scanner.db.session import transaction
from scanner.settings import Settings

log = logging.getLogger(__name__)
RELAY_GRACE_S = 5.0  # a request hands its own work over within this time; the relay takes what is older


class Dispatcher:
    """Base: the outbox relay.  Subclasses implement ``_hand_over``."""

    mode = "none"

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings, self.sessions = settings, sessions
        self._relay_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._relay_task = asyncio.create_task(self._relay_forever())

    async def stop(self) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task

    async def submit(self, image_ids: Sequence[int], model_version: str, calibration_version: str) -> None:
        """Hand these images over now; on failure they stay in the outbox for the relay."""
        size = self.settings.batch_size
        for start in range(0, len(image_ids), size):
            chunk = list(image_ids[start : start + size])
            try:
                await self._hand_over(chunk, model_version, calibration_version)
            except Exception as err:  # noqa: BLE001 - the outbox keeps the work; the relay retries
                log.warning("could not hand over %d images (%s); the relay will retry", len(chunk), err)
                return
            await _in_thread(self._mark_enqueued, chunk)

    async def healthy(self) -> bool | None:
        return None

    async def _hand_over(self, image_ids: list[int], model_version: str, calibration_version: str) -> None:
        raise NotImplementedError

    def _mark_enqueued(self, image_ids: list[int]) -> None:
        with transaction(self.sessions) as session:
            queries.mark_enqueued(session, image_ids)

    async def relay_once(self, everything: bool = False) -> int:
        """Hand over the outbox.  ``everything``: also work handed over just now (at start-up, nothing is in
        flight); otherwise leave alone what a request is handing over right now (``RELAY_GRACE_S``)."""
        now = utcnow()
        if everything:
            requeue_before = created_before = now + dt.timedelta(seconds=1)
        else:
            requeue_before = now - dt.timedelta(seconds=self.settings.requeue_after_s)
            created_before = now - dt.timedelta(seconds=RELAY_GRACE_S)
        work = await _in_thread(self._unqueued, requeue_before, created_before)
        key = lambda w: (w.model_version, w.calibration_version)  # noqa: E731
        for (model_version, calibration_version), group in groupby(sorted(work, key=key), key=key):
            await self.submit([w.image_id for w in group], model_version, calibration_version)
        return len(work)

    def _unqueued(self, requeue_before: dt.datetime, created_before: dt.datetime) -> list[queries.PendingWork]:
        with transaction(self.sessions) as session:
            return queries.unqueued_work(session, requeue_before, created_before)

    async def _relay_forever(self) -> None:
        while True:
            try:
                handed = await self.relay_once()
                if handed:
                    log.info("relayed %d pending images", handed)
            except Exception:  # noqa: BLE001 - the relay must outlive a database or broker outage
                log.exception("outbox relay failed; retrying")
            await asyncio.sleep(self.settings.relay_interval_s)


class CeleryDispatcher(Dispatcher):
    """Enqueues ``worker.analyse`` by name: the API process never imports the model code."""

    mode = "distributed"

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        super().__init__(settings, sessions)
        from worker.celery_app import make_celery

        self.celery = make_celery(settings)
        # One thread publishes, so a broker outage blocks at most that thread, never the event loop.
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="publish")

    async def _hand_over(self, image_ids: list[int], model_version: str, calibration_version: str) -> None:
        from worker.celery_app import ANALYSE_TASK

        def publish() -> None:
            self.celery.send_task(
                ANALYSE_TASK,
                args=[image_ids],
                kwargs={"model_version": model_version, "calibration_version": calibration_version},
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )

        await asyncio.get_running_loop().run_in_executor(self._publisher, publish)

    async def healthy(self) -> bool:
        def ping() -> bool:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            return True

        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, ping), timeout=5)
        except Exception:  # noqa: BLE001 - any failure means "broker unreachable"
            return False

    async def stop(self) -> None:
        await super().stop()
        self._publisher.shutdown(wait=False, cancel_futures=True)


class InProcessDispatcher(Dispatcher):
    """The embedded mode: one analysis thread in the API process, fed in batches from an asyncio queue.

    Images that arrive within a few milliseconds of each other share a batch (dynamic batching), so a
    browser sending one image per request still gets batched inference."""

    mode = "embedded"
    batch_wait_s = 0.005

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], engine: Any = None) -> None:
        super().__init__(settings, sessions)
        self.engine = engine
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._analysis = ThreadPoolExecutor(1, thread_name_prefix="analysis")
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.engine is None:
            self.engine = await asyncio.get_running_loop().run_in_executor(self._analysis, self._load_engine)
        self._loop_task = asyncio.create_task(self._analyse_forever())
        # Work accepted before a restart is picked up again, however recently it was handed over.
        await self.relay_once(everything=True)
        await super().start()

    def _load_engine(self) -> Any:
        from worker.pipeline import engine_for

        return engine_for(self.settings)

    async def _hand_over(self, image_ids: list[int], model_version: str, calibration_version: str) -> None:
        for image_id in image_ids:
            self._queue.put_nowait(image_id)

    async def healthy(self) -> bool | None:
        return self._loop_task is not None and not self._loop_task.done()

    async def _analyse_forever(self) -> None:
        from worker.pipeline import analyse_images

        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.batch_wait_s
            while len(batch) < self.settings.batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            ids = sorted(set(batch))
            try:
                await loop.run_in_executor(
                    self._analysis, analyse_images, self.sessions, self.engine, ids, self.settings.max_deliveries
                )
            except Exception:  # noqa: BLE001 - the relay hands the images over again later
                log.exception("in-process analysis of %d images failed", len(ids))

    async def stop(self) -> None:
        await super().stop()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self._analysis.shutdown(wait=True, cancel_futures=True)


async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def make_dispatcher(settings: Settings, sessions: sessionmaker[Session], engine: Any = None) -> Dispatcher:
    if settings.embedded:
        return InProcessDispatcher(settings, sessions, engine)
    return CeleryDispatcher(settings, sessions)
