"""The Celery side of audits: ``scanner.audits.tick`` (run by beat every few seconds) claims the due slots of the
DB-backed schedule (``runner.tick``, which the embedded scheduler calls too) and enqueues ``scanner.audits.run``
for each run it started.

Why the schedule lives in the database and not in beat: beat only ticks; ``next_run_at`` moves on by a
compare-and-set in the same transaction that takes the run lock, so a second beat (or a tick that overlaps the
previous one) finds the slot gone and starts nothing twice.  A run enqueued but never executed (a lost message,
a worker killed) keeps its lock only until the lease expires; the next claim then takes it over.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from scanner.audits import runner, store
from scanner.db.session import make_engine, make_sessionmaker
from scanner.settings import Settings

log = logging.getLogger(__name__)
TICK_TASK = "scanner.audits.tick"
RUN_TASK = "scanner.audits.run"
DEFAULT_TICK_S = 30.0


def register(app: Celery, settings: Settings) -> None:
    """Register the audit tasks on the worker's app (``scanner worker`` calls it through
    ``scanner.audits.cli.worker_arguments``, on the app of ``scanner.analysis.tasks.create_worker_app``)."""
    holder: dict[str, sessionmaker[Session]] = {}

    def sessions() -> sessionmaker[Session]:  # per process, created on first use (after the fork)
        if "sessions" not in holder:
            holder["sessions"] = make_sessionmaker(make_engine(settings.db_url))
        return holder["sessions"]

    @app.task(name=TICK_TASK, ignore_result=True)
    def tick_task(tick_s: float = DEFAULT_TICK_S) -> list[int]:
        return runner.tick(sessions(), lambda run_id: run_task.delay(run_id), tick_s)

    @app.task(name=RUN_TASK, ignore_result=True, acks_late=False)
    def run_task(run_id: int) -> dict[str, Any]:
        # acks_late off: a crawl must not be redelivered and run twice; a lost run is recovered by lock expiry.
        try:
            result = asyncio.run(runner.execute_run(settings, run_id))
        except store.AlreadyRunning as err:
            log.warning("%s", err)
            return {"run_id": run_id, "status": "skipped"}
        return {"run_id": result.run_id, "status": result.status, "error": result.error}


def enable_beat(app: Celery, tick_s: float) -> None:
    """The beat entry of the tick (``scanner worker --beat``).  A tick older than two periods is dropped: the
    next one does its work."""
    entry = {"task": TICK_TASK, "schedule": tick_s, "kwargs": {"tick_s": tick_s}, "options": {"expires": 2 * tick_s}}
    app.conf.beat_schedule = {**(app.conf.beat_schedule or {}), "audits-tick": entry}
