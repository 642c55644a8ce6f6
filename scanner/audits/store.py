"""Every database statement of the audits, so that the race-sensitive ones sit together and are reviewed together.

The run lock is an ``audit_runs`` row in state ``queued`` or ``running`` with ``locked_by``/``lock_expires_at``;
a claimed run waits ``queued`` until its runner admits it (``admit_run``: the tenant's limit of running runs).
Claiming it first touches the audit row with a no-op UPDATE: PostgreSQL then holds that row's lock, and SQLite
its database write lock, until the claim commits, so concurrent claimers are serialised on both backends.
Under that lock an expired live row (a crashed runner) is marked failed, and the new row is inserted only if no live
row remains (INSERT ... SELECT ... WHERE NOT EXISTS).  The scheduler's slots are claimed with a compare-and-set
on ``next_run_at`` in the same transaction, so two ticks (or two beats) never start the same slot twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, func, insert, literal, select, update
from sqlalchemy.orm import Session

from scanner.audits.diff import Seen
from scanner.db import queries
from scanner.db.models import (
    Audit,
    AuditRun,
    AuditRunImage,
    Image,
    Site,
    Tenant,
    UTCDateTime,
    WebhookDelivery,
    utcnow,
)

LOCK_LEASE = dt.timedelta(minutes=10)
LIVE = ("queued", "running")  # a run in either state holds its audit's lock


class AlreadyRunning(Exception):
    """Another run of this audit holds the lock."""


@dataclass
class AuditSpec:
    """What an audit is: validated by the CLI and the API before it reaches here."""

    start_url: str
    schedule: str
    max_pages: int = 100
    max_depth: int = 5
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    missed_run_policy: str = "run-once"
    enabled: bool = True
    name: str | None = None
    robustness_sample: int = 0  # images attacked by each run's black-box robustness check (0: none)
    allow_private: bool = False  # may crawl private addresses and any port: the local CLI's --allow-private only


def create_audit(session: Session, tenant_id: int, spec: AuditSpec, next_run_at: dt.datetime) -> Audit:
    site = queries.site_for(session, tenant_id, spec.start_url)
    if site is None:
        raise ValueError(f"{spec.start_url} has no host")
    audit = Audit(
        tenant_id=tenant_id,
        site_id=site.id,
        name=spec.name or site.host,
        start_url=spec.start_url,
        schedule=spec.schedule,
        max_pages=spec.max_pages,
        max_depth=spec.max_depth,
        include=spec.include,
        exclude=spec.exclude,
        webhook_url=spec.webhook_url,
        webhook_secret=spec.webhook_secret,
        missed_run_policy=spec.missed_run_policy,
        enabled=spec.enabled,
        robustness_sample=spec.robustness_sample,
        allow_private=spec.allow_private,
        created_at=utcnow(),
        next_run_at=next_run_at,
    )
    session.add(audit)
    session.flush()
    return audit


def audits_of(session: Session, tenant_id: int) -> list[tuple[Audit, str]]:
    query = select(Audit, Site.host).join(Site, Site.id == Audit.site_id).where(Audit.tenant_id == tenant_id)
    return [tuple(row) for row in session.execute(query.order_by(Audit.id))]  # type: ignore[misc]


def audit_of(session: Session, tenant_id: int | None, audit_id: int) -> Audit | None:
    """The audit, if it belongs to ``tenant_id`` (None: any tenant, for the scheduler and the CLI)."""
    query = select(Audit).where(Audit.id == audit_id)
    if tenant_id is not None:
        query = query.where(Audit.tenant_id == tenant_id)
    return session.scalar(query)


def host_of(session: Session, audit: Audit) -> str:
    return session.scalar(select(Site.host).where(Site.id == audit.site_id)) or ""


def remove_audit(session: Session, tenant_id: int | None, audit_id: int) -> bool:
    audit = audit_of(session, tenant_id, audit_id)
    if audit is None:
        return False
    session.delete(audit)
    return True


# --- the run lock ---------------------------------------------------------------------------------------------


def claim_run(
    session: Session,
    audit_id: int,
    owner: str,
    trigger: str,
    now: dt.datetime | None = None,
    lease: dt.timedelta = LOCK_LEASE,
) -> int:
    """Take the run lock of an audit by inserting its run, queued; the run's id.  Raises ``AlreadyRunning``
    when a live (queued or running) run holds it and ``LookupError`` when the audit is gone.  Call it first in
    its transaction."""
    now = now or utcnow()
    touched = session.execute(update(Audit).where(Audit.id == audit_id).values(next_run_at=Audit.next_run_at))
    if touched.rowcount == 0:  # type: ignore[attr-defined]
        raise LookupError(f"no audit {audit_id}")
    session.execute(
        update(AuditRun)
        .where(AuditRun.audit_id == audit_id, AuditRun.status.in_(LIVE), AuditRun.lock_expires_at < now)
        .values(
            status="failed",
            error="the run lock expired: the runner stopped without finishing (taken over)",
            error_code="lock_expired",
            finished_at=now,
            locked_by=None,
            lock_expires_at=None,
        )
    )
    running = exists().where(AuditRun.audit_id == audit_id, AuditRun.status.in_(LIVE))
    values = select(
        literal(audit_id),
        literal("queued"),  # the runner starts it when the tenant's and its own limits allow (admit_run)
        literal(trigger),
        literal(owner),
        literal(now + lease, UTCDateTime()),
        literal(now, UTCDateTime()),
    ).where(~running)
    columns = ["audit_id", "status", "trigger", "locked_by", "lock_expires_at", "started_at"]
    run_id = session.scalar(insert(AuditRun).from_select(columns, values).returning(AuditRun.id))
    if run_id is None:
        raise AlreadyRunning(f"audit {audit_id} is already running")
    return run_id


def admit_run(session: Session, run_id: int, owner: str, per_tenant: int, lease: dt.timedelta = LOCK_LEASE) -> bool:
    """Start a queued run (queued -> running, ``owner`` takes its lock) if its tenant has fewer than
    ``per_tenant`` runs running; False when it must wait.  Raises ``AlreadyRunning`` when the run is no longer
    queued (its lock expired and another claim replaced it).  The tenant's row is touched first, so that two
    runners admitting runs of one tenant are serialised (as ``claim_run`` is per audit)."""
    now = utcnow()
    tenant_id = session.scalar(
        select(Audit.tenant_id).join(AuditRun, AuditRun.audit_id == Audit.id).where(AuditRun.id == run_id)
    )
    if tenant_id is None:
        raise AlreadyRunning(f"run {run_id} is gone")
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name))
    running = session.scalar(
        select(func.count(AuditRun.id))
        .join(Audit, Audit.id == AuditRun.audit_id)
        .where(Audit.tenant_id == tenant_id, AuditRun.status == "running", AuditRun.lock_expires_at >= now)
    )
    if running >= per_tenant:
        return _extend(session, run_id, None, owner, lease, "queued") or _gone(run_id)
    query = update(AuditRun).where(AuditRun.id == run_id, AuditRun.status == "queued")
    result = session.execute(query.values(status="running", locked_by=owner, lock_expires_at=now + lease))
    return result.rowcount == 1 or _gone(run_id)  # type: ignore[attr-defined]


def _gone(run_id: int) -> bool:
    raise AlreadyRunning(f"run {run_id} is no longer queued: its lock was taken over")


def heartbeat(session: Session, run_id: int, owner: str, lease: dt.timedelta = LOCK_LEASE) -> bool:
    """Extend the lock of a live run; False when ``owner`` no longer holds it."""
    return _extend(session, run_id, owner, owner, lease)


def _extend(
    session: Session, run_id: int, holder: str | None, owner: str, lease: dt.timedelta, status: str = "running"
) -> bool:
    query = update(AuditRun).where(AuditRun.id == run_id, AuditRun.status == status)
    if holder is not None:
        query = query.where(AuditRun.locked_by == holder)
    result = session.execute(query.values(locked_by=owner, lock_expires_at=utcnow() + lease))
    return result.rowcount == 1  # type: ignore[attr-defined]


def manual_runs_since(session: Session, audit_id: int, since: dt.datetime) -> list[dt.datetime]:
    """When the audit's manual runs since ``since`` started, oldest first (the trigger's rate limit)."""
    query = select(AuditRun.started_at).where(
        AuditRun.audit_id == audit_id, AuditRun.trigger == "manual", AuditRun.started_at >= since
    )
    return list(session.scalars(query.order_by(AuditRun.started_at)))


def finish_run(
    session: Session,
    run_id: int,
    counts: dict[str, int],
    snapshot: Sequence[Seen],
    diff: dict[str, Any],
    robustness: dict[str, Any] | None = None,
) -> None:
    """Record the run's snapshot, counts and diff, and release the lock."""
    ids = dict(
        session.execute(
            select(Image.sha256, Image.id).where(Image.sha256.in_([seen.sha256 for seen in snapshot]))
        ).all()
    )
    rows = [
        {
            "run_id": run_id,
            "image_id": ids.get(seen.sha256),
            "sha256": seen.sha256,
            "url": seen.url,
            "flagged": seen.flagged,
            "label": seen.label,
            "score": seen.score,
        }
        for seen in snapshot
    ]
    if rows:
        session.execute(insert(AuditRunImage), rows)
    now = utcnow()
    run = session.get_one(AuditRun, run_id)
    run.status, run.finished_at, run.locked_by, run.lock_expires_at = "done", now, None, None
    run.pages, run.images, run.flagged = counts["pages"], counts["images"], counts["flagged"]
    run.newly_flagged, run.gone, run.changed = (len(diff[name]) for name in ("newly_flagged", "gone", "changed"))
    run.diff = diff
    run.robustness = robustness
    session.execute(update(Audit).where(Audit.id == run.audit_id).values(last_run_at=now))


def fail_run(session: Session, run_id: int, error: str, code: str = "crawl_error") -> None:
    """End a run as failed with its reason: ``code`` stable (``scanner.audits.runner`` names them), ``error`` for
    people."""
    session.execute(
        update(AuditRun)
        .where(AuditRun.id == run_id)
        .values(
            status="failed",
            error=error[:4000],
            error_code=code[:40],
            finished_at=utcnow(),
            locked_by=None,
            lock_expires_at=None,
        )
    )


def previous_snapshot(session: Session, audit_id: int, before_run_id: int) -> tuple[int, list[Seen]] | None:
    """The snapshot of the latest successful run before ``before_run_id``, with that run's id."""
    previous = session.scalar(
        select(func.max(AuditRun.id)).where(
            AuditRun.audit_id == audit_id, AuditRun.status == "done", AuditRun.id < before_run_id
        )
    )
    if previous is None:
        return None
    rows = session.scalars(select(AuditRunImage).where(AuditRunImage.run_id == previous).order_by(AuditRunImage.id))
    return previous, [Seen(r.sha256, r.url, r.flagged, r.label, r.score) for r in rows]


def snapshot_of(session: Session, run_id: int) -> list[Seen]:
    rows = session.scalars(select(AuditRunImage).where(AuditRunImage.run_id == run_id).order_by(AuditRunImage.id))
    return [Seen(r.sha256, r.url, r.flagged, r.label, r.score) for r in rows]


def runs_of(session: Session, audit_id: int, limit: int = 50) -> list[AuditRun]:
    query = select(AuditRun).where(AuditRun.audit_id == audit_id).order_by(AuditRun.id.desc()).limit(limit)
    return list(session.scalars(query))


def record_delivery(
    session: Session, run_id: int, attempt: int, status_code: int | None, error: str | None, duration_ms: float
) -> None:
    session.add(
        WebhookDelivery(
            run_id=run_id, attempt=attempt, status_code=status_code, error=error, duration_ms=duration_ms, at=utcnow()
        )
    )


def deliveries_of(session: Session, run_id: int) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.run_id == run_id).order_by(WebhookDelivery.attempt)
    return list(session.scalars(query))


# --- the DB-backed schedule ---------------------------------------------------------------------------------------


def due_audits(session: Session, now: dt.datetime) -> list[tuple[int, dt.datetime]]:
    query = select(Audit.id, Audit.next_run_at).where(Audit.enabled.is_(True), Audit.next_run_at <= now)
    return [tuple(row) for row in session.execute(query.order_by(Audit.next_run_at))]  # type: ignore[misc]


def advance_slot(session: Session, audit_id: int, due: dt.datetime, following: dt.datetime) -> bool:
    """Compare-and-set of ``next_run_at``: True for the one tick that moved this slot on."""
    result = session.execute(
        update(Audit).where(Audit.id == audit_id, Audit.next_run_at == due).values(next_run_at=following)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]
