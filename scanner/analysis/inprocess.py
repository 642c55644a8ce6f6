"""Analysis in this process: one thread with the process's engine, fed from an asyncio queue in batches.  The
embedded API (``scanner.api.dispatch.InProcessDispatcher``) and the local submitter of crawls and audit runs
(``scanner.local``) hand their work over through it.

Dynamic batching: images that arrive within ``batch_wait_s`` of each other share a batch (up to
``batch_size``), so a browser sending one image per request still gets batched inference.

The retry rule: a batch that fails is analysed again at once, up to ``max_deliveries + 1`` times in all.  The
pipeline counts every unfinished attempt per image, goes one image at a time after a failure, and dead-letters
an image at ``max_deliveries`` attempts, so the last try settles every image of the batch (a verdict, a failed
item or a dead letter): a poison input never leaves a scan pending.  A failure that counts no attempt (the
engine cannot load, the database is down) leaves its images pending in the outbox, where the API's relay
hands them over again after ``requeue_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from scanner.db import queries
from scanner.db.session import transaction
from scanner.settings import Settings

log = logging.getLogger(__name__)


class InProcessAnalysis:
    """``start()``, then ``put`` (the caller has marked the images handed over) or ``submit`` (marks them
    itself: ``intake.Handover``); ``stop()`` finishes the batch in progress and drops the queue, which the
    outbox still holds."""

    batch_wait_s = 0.005

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], engine: Any = None) -> None:
        self.settings, self.sessions = settings, sessions
        self.engine = engine  # a loaded ``worker.engine.Engine``, or None: the process's, on first use
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="analysis")
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._analyse_forever())

    async def load_engine(self) -> Any:
        """The engine, loaded in the analysis thread the first time (torch is imported there)."""
        if self.engine is None:
            from scanner.analysis.pipeline import engine_for

            loop = asyncio.get_running_loop()
            self.engine = await loop.run_in_executor(self._thread, engine_for, self.settings)
        return self.engine

    def put(self, image_ids: Sequence[int]) -> None:
        for image_id in image_ids:
            self._queue.put_nowait(image_id)

    async def submit(self, image_ids: Sequence[int], model_version: str, calibration_version: str) -> None:
        """Mark the images handed over (a ``scanner serve`` on the same database must not take them for lost
        work), then queue them.  The versions are the engine's own: this process serves one."""
        if not image_ids:
            return
        await asyncio.to_thread(self._mark_enqueued, list(image_ids))
        self.put(image_ids)

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _mark_enqueued(self, image_ids: list[int]) -> None:
        with transaction(self.sessions) as session:
            queries.mark_enqueued(session, image_ids)

    async def _analyse_forever(self) -> None:
        while True:
            await self._analyse(await self._next_batch())

    async def _next_batch(self) -> list[int]:
        loop = asyncio.get_running_loop()
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
        return sorted(set(batch))

    async def _analyse(self, image_ids: list[int]) -> None:
        from scanner.analysis.pipeline import analyse_images  # imports torch: not before there is work

        loop = asyncio.get_running_loop()
        tries = self.settings.max_deliveries + 1
        for attempt in range(1, tries + 1):
            try:
                engine = await self.load_engine()
                args = (self.sessions, engine, image_ids, self.settings.max_deliveries)
                await loop.run_in_executor(self._thread, analyse_images, *args)
                return
            except Exception:  # noqa: BLE001 - counted per image by the pipeline; the last try dead-letters
                log.exception("in-process analysis of %d images failed (try %d of %d)", len(image_ids), attempt, tries)
