"""The embedded scheduler of ``scanner serve`` (``scanner.audits.local_beat``) on a real SQLite database: a
stop that comes while a tick is claiming a run must not leave that run holding its lock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from scanner.audits.local_beat import STOPPED, LocalScheduler
from scanner.db.models import AuditRun
from scanner.settings import Settings


def test_a_stop_during_a_tick_fails_the_run_that_tick_claimed(settings: Settings, sessions: Any, make_audit: Any):
    """The tick runs in a thread, which a cancelled coroutine does not stop: the run it claims after the stop
    began was left "running" until its lease expired (seen as a flaky Ctrl-C test of ``scanner serve``)."""
    audit_id = make_audit("http://127.0.0.1:9/", schedule="every 6h")  # due now: created with next_run_at = now

    async def start_and_stop_at_once() -> None:
        scheduler = LocalScheduler(settings, tick_s=0.05)
        await scheduler.start()
        await asyncio.sleep(0)  # the first tick is now in its thread
        await scheduler.stop()

    asyncio.run(start_and_stop_at_once())
    time.sleep(0.5)  # a tick thread cut loose would commit its claim by now
    with sessions() as session:
        runs = session.scalars(select(AuditRun).where(AuditRun.audit_id == audit_id)).all()
    assert [(run.status, run.error) for run in runs] == [("failed", STOPPED)]
    assert runs[0].locked_by is None
