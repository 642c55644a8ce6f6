"""Handing pending images to the analysis: Celery (distributed) or a thread in this process (embedded).

Both work from the database as an outbox: a scan's pending items are marked ``enqueued_at`` once handed over,
and a relay loop hands over again whatever was never handed over (broker down at submission) or was handed
over ``requeue_after_s`` ago and is still pending (a broker restarted without persistence lost it).  Verdict
writes are idempotent, so handing an image over twice costs time, never correctness.

The embedded mode's analysis is ``scanner.analysis.inprocess``, the one in-process hand-over (the local
submitter uses it too); its retry rule is written there.

A request never waits for the broker: it records its work (the outbox) and hands it over in the background
(``submit_soon``), so a broker outage delays analysis but not the 202.  In the distributed mode the relay
also watches the broker, so that lost work comes back in seconds rather than after ``requeue_after_s``:
a Redis restart (a new ``run_id``) loses every queued message, so all pending work is handed over again; and
when the queue is empty while work handed over ``requeue_idle_s`` ago is still pending and no live worker
holds it (a worker killed with its messages unacknowledged, a message dropped), that work is handed over again.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from scanner.analysis.inprocess import InProcessAnalysis
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
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._relay_task = asyncio.create_task(self._relay_forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._relay_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit_soon(self, image_ids: Sequence[int], model_version: str, calibration_version: str) -> None:
        """``submit`` in the background: the caller (a request) answers at once.  The work is in the database
        already, so if this hand-over fails or the process dies, the relay hands it over later."""
        if not image_ids:
            return
        task = asyncio.create_task(self.submit(list(image_ids), model_version, calibration_version))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        return await self._hand_over_work(await _in_thread(self._unqueued, requeue_before, created_before))

    async def _hand_over_work(self, work: list[queries.PendingWork]) -> int:
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
        from scanner.analysis.celery_app import make_celery

        self.celery = make_celery(settings)
        # One thread publishes, so a broker outage blocks at most that thread, never the event loop.
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="publish")
        self._broker_down = False  # set by a failed publish, cleared by the relay's next successful probe
        self._broker_run_id: str | None = None

    async def _hand_over(self, image_ids: list[int], model_version: str, calibration_version: str) -> None:
        from scanner.analysis.celery_app import ANALYSE_TASK

        if self._broker_down:  # fail fast: the relay hands the work over once a probe reaches the broker
            raise ConnectionError("the broker is unreachable")

        def publish() -> None:
            self.celery.send_task(
                ANALYSE_TASK,
                args=[image_ids],
                kwargs={"model_version": model_version, "calibration_version": calibration_version},
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )

        try:
            await asyncio.get_running_loop().run_in_executor(self._publisher, publish)
        except Exception:
            self._broker_down = True
            raise

    async def relay_once(self, everything: bool = False) -> int:
        if everything:
            return await super().relay_once(everything)
        probe = await self._probe()
        self._broker_down = probe is None
        if probe is None:
            return 0  # nothing can be handed over now; the outbox keeps the work
        run_id, queued = probe
        restarted = self._broker_run_id not in (None, run_id)
        self._broker_run_id = run_id
        now = utcnow()
        grace = now - dt.timedelta(seconds=RELAY_GRACE_S)
        if restarted:
            log.warning("the broker restarted and lost its queue: handing all pending work over again")
            return await self._hand_over_work(await _in_thread(self._unqueued, now + dt.timedelta(seconds=1), grace))
        if queued == 0:
            return await self._requeue_idle(now, grace)
        return await super().relay_once()

    async def _requeue_idle(self, now: dt.datetime, grace: dt.datetime) -> int:
        """The queue is empty: pending work handed over ``requeue_idle_s`` ago that no live worker holds is lost
        (a worker killed with it unacknowledged); hand it over again."""
        idle_before = now - dt.timedelta(seconds=self.settings.requeue_idle_s)
        work = await _in_thread(self._unqueued, idle_before, grace)
        if not work:
            return 0
        held = await _in_thread(self._held_by_workers)
        lost = [w for w in work if w.image_id not in held]
        if lost:
            log.warning("%d pending images are in no queue and held by no worker: handing them over again", len(lost))
        return await self._hand_over_work(lost)

    def _held_by_workers(self) -> frozenset[int]:
        """Image ids of the tasks live workers are running or have reserved (an empty set when none answers)."""
        inspector = self.celery.control.inspect(timeout=1.0)
        held: set[int] = set()
        for replies in (inspector.active() or {}, inspector.reserved() or {}):
            for tasks in replies.values():
                for task in tasks:
                    args = task.get("args") or []
                    if isinstance(args, str):  # older workers report the arguments as their repr
                        args = ast.literal_eval(args)
                    if args and isinstance(args[0], list):
                        held.update(int(image_id) for image_id in args[0])
        return frozenset(held)

    async def _probe(self) -> tuple[str, int] | None:
        """(the broker's run id, messages waiting in the analysis queue), or None when it does not answer."""
        from scanner.analysis.celery_app import QUEUE

        def probe() -> tuple[str, int]:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
                client = connection.default_channel.client
                return str(client.info("server")["run_id"]), int(client.llen(QUEUE))

        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, probe), timeout=5)
        except Exception:  # noqa: BLE001 - any failure means "broker unreachable"
            return None

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
    """The embedded mode: the outbox relay in front of ``scanner.analysis.inprocess.InProcessAnalysis``, the
    analysis thread of this process (dynamic batching, and its retry rule)."""

    mode = "embedded"

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], engine: Any = None) -> None:
        super().__init__(settings, sessions)
        self.analysis = InProcessAnalysis(settings, sessions, engine)

    async def start(self) -> None:
        await self.analysis.load_engine()  # a server that cannot load its models fails at start, not later
        await self.analysis.start()
        # Work accepted before a restart is picked up again, however recently it was handed over.
        await self.relay_once(everything=True)
        await super().start()

    async def _hand_over(self, image_ids: list[int], model_version: str, calibration_version: str) -> None:
        self.analysis.put(image_ids)

    async def healthy(self) -> bool | None:
        return self.analysis.running

    async def stop(self) -> None:
        await super().stop()
        await self.analysis.stop()


async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def make_dispatcher(settings: Settings, sessions: sessionmaker[Session], engine: Any = None) -> Dispatcher:
    if settings.embedded:
        return InProcessDispatcher(settings, sessions, engine)
    return CeleryDispatcher(settings, sessions)
