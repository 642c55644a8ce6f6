"""One run of an audit: crawl the site, record the snapshot and the diff, release the lock, send the webhook.

Where the crawl runs: in the process that executes the run (``scanner audit run`` in the foreground,
``scanner serve`` in the embedded mode, or a Celery worker for scheduled runs), submitting each page through
the intake (``scanner.local``: the function the API's handler calls) as the audit's tenant, analysing in that
process with its one engine and writing to the configured database.  A worker therefore needs no API server URL
nor a stored service key, and an audit's analysis never waits in the queue behind (or deadlocks with) the
worker's own analysis tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from scanner import secretbox
from scanner.audits import schedule, store, webhooks
from scanner.audits.diff import Seen, compare
from scanner.crawl import CrawlConfig
from scanner.crawl.scan import CrawlOutcome
from scanner.db.models import Audit, utcnow
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings

log = logging.getLogger(__name__)
HEARTBEAT_S = 60.0
ADMIT_POLL_S = 1.0  # how often a queued run asks again to be admitted


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str
    counts: dict[str, int]
    diff: dict[str, Any] | None
    error: str | None = None
    error_code: str | None = None


class RunFailed(Exception):
    """A run that cannot succeed, with its stable reason: ``code`` is recorded with the run (``error_code``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(sessions: sessionmaker[Session], audit_id: int, trigger: str = "manual") -> int:
    """Take the run lock now (raises ``store.AlreadyRunning``); the new run's id."""
    with transaction(sessions) as session:
        return store.claim_run(session, audit_id, owner_id(), trigger)


def tick(sessions: sessionmaker[Session], enqueue: Callable[[int], Any], tick_s: float) -> list[int]:
    """One tick of the schedule: start every due audit's run (by the missed-run policy) and ``enqueue`` it; the
    run ids started.  Beat's task (``scanner.audits.tasks``) and the embedded scheduler of ``scanner serve``
    (``scanner.audits.local_beat``) both call it, so neither starts a slot the other took."""
    now = utcnow()
    with sessions() as session:
        due = store.due_audits(session, now)
    started = []
    for audit_id, slot in due:
        run_id = _claim_slot(sessions, audit_id, slot, now, dt.timedelta(seconds=3 * tick_s))
        if run_id is not None:
            enqueue(run_id)
            started.append(run_id)
    return started


def _claim_slot(
    sessions: sessionmaker[Session], audit_id: int, slot: dt.datetime, now: dt.datetime, grace: dt.timedelta
) -> int | None:
    with transaction(sessions) as session:
        audit = session.get(Audit, audit_id)
        if audit is None:
            return None
        run, following = schedule.next_slot(schedule.parse(audit.schedule), slot, now, audit.missed_run_policy, grace)
        if not store.advance_slot(session, audit_id, slot, following):
            return None  # another tick took this slot
        if not run:
            log.info("audit %s: slot %s missed, skipped by policy", audit_id, slot.isoformat())
            return None
        try:
            return store.claim_run(session, audit_id, f"queued:{owner_id()}", "schedule", now)
        except store.AlreadyRunning:
            log.info("audit %s: slot %s comes while a run is still going on: not started", audit_id, slot)
            return None


async def execute_run(
    settings: Settings, run_id: int, console: Console | None = None, webhook_backoff_s: float = webhooks.BACKOFF_S
) -> RunResult:
    """Execute a claimed run to its end; never raises for a failed crawl (the run records it)."""
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    try:
        owner = owner_id()
        await _wait_for_admission(settings, sessions, run_id, owner)
        try:
            return await _execute(settings, sessions, run_id, owner, console, webhook_backoff_s)
        finally:
            _PROCESS_SLOTS.release()
    finally:
        engine.dispose()


class _ProcessSlots:
    """The audit runs this process executes at once (each drives a browser).  A counter under a thread lock, not
    an asyncio semaphore: Celery runs each task in its own event loop, and the embedded server's runs share one."""

    def __init__(self) -> None:
        self._lock, self.taken = threading.Lock(), 0

    def take(self, limit: int) -> bool:
        with self._lock:
            if self.taken >= limit:
                return False
            self.taken += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.taken -= 1


_PROCESS_SLOTS = _ProcessSlots()


async def _wait_for_admission(settings: Settings, sessions: sessionmaker[Session], run_id: int, owner: str) -> None:
    """Wait, queued, for one of this process's slots and for the tenant's limit to admit the run (the waiting run's
    lock is extended meanwhile); on return the run is running and holds a slot.  Raises ``AlreadyRunning`` when
    the run was taken over while it waited."""

    def admit() -> bool:
        with transaction(sessions) as session:
            return store.admit_run(session, run_id, owner, settings.audit_runs_per_tenant)

    while True:
        if _PROCESS_SLOTS.take(settings.audit_runs_per_process):
            try:
                if await asyncio.to_thread(admit):
                    return
            except BaseException:
                _PROCESS_SLOTS.release()
                raise
            _PROCESS_SLOTS.release()
        elif not await asyncio.to_thread(_still_queued, sessions, run_id, owner):
            raise store.AlreadyRunning(f"run {run_id} is no longer queued: its lock was taken over")
        await asyncio.sleep(ADMIT_POLL_S)


def _still_queued(sessions: sessionmaker[Session], run_id: int, owner: str) -> bool:
    with transaction(sessions) as session:
        return store.admit_run(session, run_id, owner, 0)  # a limit of 0 admits nothing: extends the lock only


async def _execute(
    settings: Settings,
    sessions: sessionmaker[Session],
    run_id: int,
    owner: str,
    console: Console | None,
    webhook_backoff_s: float,
) -> RunResult:
    audit, tenant = await asyncio.to_thread(_load, sessions, run_id)
    result = await _crawl_and_record(settings, sessions, run_id, owner, audit, tenant, console)
    if audit.webhook_url:  # a failed run too: the receiver learns why, rather than hearing nothing
        payload = _payload(audit, result)
        policy = _webhook_policy(settings)
        await webhooks.deliver(
            sessions,
            run_id,
            audit.webhook_url,
            secretbox.decrypt(settings, audit.webhook_secret) or "",  # encrypted at rest
            payload,
            policy,
            backoff_s=webhook_backoff_s,
        )
    return result


async def _crawl_and_record(
    settings: Settings,
    sessions: sessionmaker[Session],
    run_id: int,
    owner: str,
    audit: Audit,
    tenant: str,
    console: Console | None,
) -> RunResult:
    beat = asyncio.create_task(_heartbeat(sessions, run_id, owner))
    try:
        outcome = await _crawl(settings, audit, tenant, console)
        robustness = None
        if audit.robustness_sample:
            robustness = await asyncio.to_thread(_robustness_check, settings, sessions, audit, outcome, run_id)
        return await asyncio.to_thread(_record, sessions, run_id, audit.id, outcome, robustness)
    except RunFailed as err:
        log.warning("audit %s run %s failed: %s: %s", audit.id, run_id, err.code, err)
        await asyncio.to_thread(_fail, sessions, run_id, str(err), err.code)
        return RunResult(run_id, "failed", {}, None, str(err), err.code)
    except Exception as err:  # noqa: BLE001 - any failure ends the run as failed, with its reason
        log.exception("audit %s run %s failed", audit.id, run_id)
        error = f"{type(err).__name__}: {err}"
        await asyncio.to_thread(_fail, sessions, run_id, error, "crawl_error")
        return RunResult(run_id, "failed", {}, None, error, "crawl_error")
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


def _load(sessions: sessionmaker[Session], run_id: int) -> tuple[Audit, str]:
    from scanner.db.models import AuditRun, Tenant

    with sessions() as session:
        run = session.get_one(AuditRun, run_id)
        audit = session.get_one(Audit, run.audit_id)
        tenant = session.get_one(Tenant, audit.tenant_id).name
        session.expunge(audit)
        return audit, tenant


async def _heartbeat(sessions: sessionmaker[Session], run_id: int, owner: str) -> None:
    def beat() -> bool:
        with transaction(sessions) as session:
            return store.heartbeat(session, run_id, owner)

    while True:
        await asyncio.sleep(HEARTBEAT_S)
        if not await asyncio.to_thread(beat):
            log.warning("run %s lost its lock", run_id)


async def _crawl(settings: Settings, audit: Audit, tenant: str, console: Console | None) -> CrawlOutcome:
    """The audit's crawl, its progress on ``console`` (``scanner audit run``); none for scheduled runs."""
    from scanner.crawl.progress import crawl_progress
    from scanner.crawl.scan import crawl_and_scan
    from scanner.local import LocalSubmitter

    await _check_start(settings, audit)
    # The local intake analyses in this process, whatever the settings' broker: see the module docstring.
    local = settings.model_copy(update={"broker_url": None, "result_backend": None})
    with tempfile.TemporaryDirectory(prefix="audit-") as workdir:
        config = _crawl_config(settings, audit, Path(workdir))
        async with LocalSubmitter(local, tenant) as submitter:
            progress = crawl_progress(console) if console is not None else None
            outcome = await crawl_and_scan(config, submitter, resume=False, progress=progress)
    outcome.mode = "audit"
    if not outcome.pages or all(page["error"] for page in outcome.pages):
        errors = sorted({page["error"] for page in outcome.pages if page["error"]})
        said = f" ({', '.join(errors)})" if errors else ""
        raise RunFailed("no_page", f"the crawl of {audit.start_url} reached no page{said}")
    return outcome


async def _check_start(settings: Settings, audit: Audit) -> None:
    """The start URL under this run's rules, before a browser starts: a refusal becomes the run's reason (the
    crawl itself would only see the guard's 403)."""
    from scanner.audits.spec import check_start_url
    from scanner.fetch import FetchError

    try:
        await check_start_url(audit.start_url, settings, audit.allow_private)
    except FetchError as err:
        hint = ""
        if err.code in ("blocked_address", "blocked_port") and not audit.allow_private:
            hint = " (an audit of a local or staging site: `scanner audit add URL --allow-private` on this machine)"
        raise RunFailed(err.code, f"{audit.start_url} is refused: {err.message}{hint}") from None


def _crawl_config(settings: Settings, audit: Audit, workdir: Path) -> CrawlConfig:
    from scanner.audits.spec import run_policy

    return CrawlConfig(
        start_url=audit.start_url,
        max_pages=audit.max_pages,
        max_depth=audit.max_depth,
        include=tuple(audit.include or ()),
        exclude=tuple(audit.exclude or ()),
        max_image_bytes=settings.max_image_bytes,
        state_path=workdir / "frontier.sqlite",
        # A crawl on a tenant's behalf: every request under the fetcher's address and port rules (or the wider
        # ones the machine's owner gave this audit).
        network_policy=run_policy(settings, audit.allow_private),
    )


def _robustness_check(
    settings: Settings, sessions: sessionmaker[Session], audit: Audit, outcome: CrawlOutcome, run_id: int
) -> dict[str, Any]:
    """The run's black-box attack on a seeded sample of the images it met (``scanner.audits.robustness``)."""
    from scanner.analysis.pipeline import engine_for
    from scanner.audits import robustness
    from scanner.db import queries

    shas = sorted(image.sha256 for image in outcome.images.values() if image.state == "done")
    chosen = robustness.sample_images(shas, audit.robustness_sample, seed=audit.id)
    with sessions() as session:
        blobs = queries.blobs_by_sha256(session, chosen)
    result = robustness.check(engine_for(settings), blobs, seed=run_id)
    log.info("audit %s run %s: %d/%d predictions flipped", audit.id, run_id, result.flipped, result.sample)
    return result.to_dict()


def _record(
    sessions: sessionmaker[Session],
    run_id: int,
    audit_id: int,
    outcome: CrawlOutcome,
    robustness: dict[str, Any] | None = None,
) -> RunResult:
    snapshot = [Seen(i.sha256, i.url, i.flagged, i.label, i.score) for i in outcome.images.values()]
    counts = {"pages": len(outcome.pages), "images": len(outcome.images), "flagged": len(outcome.flagged)}
    with transaction(sessions) as session:
        previous = store.previous_snapshot(session, audit_id, run_id)
        diff = compare(previous[1] if previous else None, snapshot, previous[0] if previous else None)
        store.finish_run(session, run_id, counts, snapshot, diff, robustness)
    if robustness:
        counts = {**counts, "robustness_sample": robustness["sample"], "robustness_flipped": robustness["flipped"]}
    return RunResult(run_id, "done", counts, diff)


def _fail(sessions: sessionmaker[Session], run_id: int, error: str, code: str) -> None:
    with transaction(sessions) as session:
        store.fail_run(session, run_id, error, code)


def _payload(audit: Audit, result: RunResult) -> dict[str, Any]:
    run: dict[str, Any] = {
        "id": result.run_id,
        "status": result.status,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if result.status == "failed":
        run["error"] = {"code": result.error_code, "message": result.error}
    return {
        "event": "audit.run.finished",
        "audit": {"id": audit.id, "name": audit.name, "start_url": audit.start_url},
        "run": run,
        "counts": result.counts,
        "diff": result.diff,
    }


def _webhook_policy(settings: Settings) -> webhooks.FetchPolicy:
    from scanner.intake import fetch_policy

    return fetch_policy(settings)


def run_now(settings: Settings, audit_id: int, console: Console | None = None) -> RunResult:
    """``scanner audit run``: claim and execute in the foreground."""
    engine = make_engine(settings.db_url)
    try:
        run_id = claim(make_sessionmaker(engine), audit_id)
    finally:
        engine.dispose()
    return asyncio.run(execute_run(settings, run_id, console))
