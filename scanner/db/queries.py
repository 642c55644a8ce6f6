"""Every read and write the API and the workers make.  Each function that returns tenant data takes the
tenant id and filters on it: one tenant never sees another's scans, images or reports."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, and_, delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from scanner.db.models import (
    DeadLetter,
    Feedback,
    Image,
    ImageBlob,
    Scan,
    ScanItem,
    Sighting,
    Site,
    Verdict,
    utcnow,
)


def insert_ignoring_duplicates(session: Session, model: type, values: dict[str, Any], keys: Sequence[str]) -> None:
    """INSERT that does nothing when a row with the same ``keys`` exists (concurrent writers race safely)."""
    session.execute(_insert_for(session)(model).values(**values).on_conflict_do_nothing(index_elements=list(keys)))


def _insert_for(session: Session):  # noqa: ANN202 - the dialect's INSERT construct (with ON CONFLICT)
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[session.get_bind().dialect.name]


# --- intake ------------------------------------------------------------------------------------------------


def site_for(session: Session, tenant_id: int, page_url: str | None) -> Site | None:
    host = (urlsplit(page_url).hostname or "").lower() if page_url else ""
    if not host:
        return None
    insert_ignoring_duplicates(
        session, Site, {"tenant_id": tenant_id, "host": host, "created_at": utcnow()}, ["tenant_id", "host"]
    )
    return session.scalar(select(Site).where(Site.tenant_id == tenant_id, Site.host == host))


def site_host(text: str) -> str:
    """The host a site filter means: sites are stored by host name, so ``127.0.0.1:8000`` or
    ``http://shop.example/`` must not silently match nothing."""
    text = text.strip().lower()
    try:
        return urlsplit(text if "://" in text else f"//{text}").hostname or text
    except ValueError:
        return text


def new_scan(
    session: Session, tenant_id: int, source: str, page_url: str | None, model_version: str, calibration_version: str
) -> Scan:
    site = site_for(session, tenant_id, page_url)
    scan = Scan(
        id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        source=source,
        page_url=page_url,
        site_id=site.id if site else None,
        model_version=model_version,
        calibration_version=calibration_version,
        created_at=utcnow(),
    )
    session.add(scan)
    session.flush()
    return scan


@dataclass
class NewItem:
    """One image of a submission (``scanner.intake.Entry``): given by URL or as bytes, then fetched, checked and
    hashed by the intake; recorded with its bytes, or with the error that refused it."""

    sha256: str | None = None
    data: bytes | None = None
    format: str = ""
    width: int = 0
    height: int = 0
    image_url: str | None = None
    filename: str | None = None
    error: tuple[str, str] | None = None


def add_items(session: Session, scan: Scan, items: Sequence[NewItem], first_position: int = 0) -> list[int]:
    """Record a scan's images with a fixed number of statements, whatever their count: new images and blobs,
    ``last_seen``, the items (done at once when a verdict for the scan's versions exists, failed with their
    error, pending otherwise) and a sighting per accepted image.  Returns the image ids still to analyse."""
    now = utcnow()
    ids = _upsert_images(session, [item for item in items if item.sha256 and item.data is not None], now)
    known = _known_to_tenant(session, scan, list(ids.values()))
    rows, sightings, pending = [], [], []
    for position, item in enumerate(items, start=first_position):
        image_id = ids.get(item.sha256) if item.sha256 else None
        row = {
            "scan_id": scan.id,
            "position": position,
            "image_id": image_id,
            "image_url": item.image_url,
            "filename": item.filename,
            "state": "pending",
            "error_code": None,
            "error_message": None,
            "updated_at": now,
            "enqueued_at": None,
        }
        if image_id is None:
            code, message = item.error or ("unknown", "no image")
            row.update(state="failed", error_code=code, error_message=message)
        else:
            sightings.append(
                {
                    "tenant_id": scan.tenant_id,
                    "image_id": image_id,
                    "site_id": scan.site_id,
                    "scan_id": scan.id,
                    "page_url": scan.page_url,
                    "image_url": item.image_url,
                    "source": scan.source,
                    "seen_at": now,
                }
            )
            if image_id in known:
                row["state"] = "done"
            elif image_id not in pending:
                pending.append(image_id)
        rows.append(row)
    session.execute(insert(ScanItem), rows)
    if sightings:
        session.execute(insert(Sighting), sightings)
    return pending


def _known_to_tenant(session: Session, scan: Scan, image_ids: list[int]) -> set[int]:
    """Images with a verdict for the scan's versions that this tenant has met before.  A verdict another tenant
    caused is not answered at once: the item waits for a worker like a new image (which only settles it), so a
    tenant cannot learn from a 201 that someone else submitted the same bytes."""
    with_verdict = select(Verdict.image_id).where(
        Verdict.image_id.in_(image_ids),
        Verdict.model_version == scan.model_version,
        Verdict.calibration_version == scan.calibration_version,
    )
    seen = select(Sighting.image_id).where(Sighting.tenant_id == scan.tenant_id, Sighting.image_id.in_(image_ids))
    return set(session.scalars(with_verdict.where(Verdict.image_id.in_(seen))))


def tenant_first_seen(session: Session, tenant_id: int, image_ids: Sequence[int]) -> dict[int, dt.datetime]:
    """When this tenant first met each of these images (for verdict times told per tenant)."""
    rows = session.execute(
        select(Sighting.image_id, func.min(Sighting.seen_at))
        .where(Sighting.tenant_id == tenant_id, Sighting.image_id.in_(list(image_ids)))
        .group_by(Sighting.image_id)
    )
    return {image_id: _aware(seen) for image_id, seen in rows}  # type: ignore[misc]


def settle_known(session: Session, image_ids: Sequence[int], model_version: str, calibration_version: str) -> None:
    """Pending items of images that already have their verdict (another tenant's, or a redelivery's) are done."""
    with_verdict = list(
        session.scalars(
            select(Verdict.image_id).where(
                Verdict.image_id.in_(list(image_ids)),
                Verdict.model_version == model_version,
                Verdict.calibration_version == calibration_version,
            )
        )
    )
    if with_verdict:
        _settle_items(session, with_verdict, model_version, calibration_version, "done", None)


def _upsert_images(session: Session, items: Sequence[NewItem], now: dt.datetime) -> dict[str, int]:
    """sha256 -> image id for these items, inserting the images (and blobs) not yet stored."""
    unique = {item.sha256: item for item in items}
    if not unique:
        return {}
    rows = [
        {
            "sha256": sha,
            "format": item.format,
            "byte_size": len(item.data or b""),
            "width": item.width,
            "height": item.height,
            "first_seen": now,
            "last_seen": now,
            "attempts": 0,
        }
        for sha, item in unique.items()
    ]
    # executemany with one cached statement: a multi-row VALUES would be compiled anew for every batch size.
    session.execute(_insert_for(session)(Image).on_conflict_do_nothing(index_elements=["sha256"]), rows)
    ids = {
        sha: image_id
        for sha, image_id in session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(list(unique))))
    }
    session.execute(update(Image).where(Image.id.in_(list(ids.values()))).values(last_seen=now))
    blobs = [{"image_id": ids[sha], "data": item.data} for sha, item in unique.items()]
    session.execute(_insert_for(session)(ImageBlob).on_conflict_do_nothing(index_elements=["image_id"]), blobs)
    return ids  # type: ignore[return-value]


def finish_scan_if_complete(session: Session, scan_ids: Iterable[str]) -> None:
    """Stamp ``finished_at`` on those of these scans that have no pending item left (one statement)."""
    ids = list(set(scan_ids))
    if not ids:
        return
    pending = exists().where(ScanItem.scan_id == Scan.id, ScanItem.state == "pending")
    session.execute(
        update(Scan).where(Scan.id.in_(ids), Scan.finished_at.is_(None), ~pending).values(finished_at=utcnow())
    )


# --- the outbox: pending work not yet (or too long ago) handed to the broker ----------------------------------


@dataclass(frozen=True)
class PendingWork:
    image_id: int
    model_version: str
    calibration_version: str


def unqueued_work(
    session: Session, requeue_before: dt.datetime, created_before: dt.datetime, limit: int = 10_000
) -> list[PendingWork]:
    """Pending images never handed to the broker (and older than ``created_before``, so that a submission being
    handed over right now is left to its request), or handed over before ``requeue_before`` and still not done
    (a broker that lost its queue, a message dropped); duplicates are harmless since verdict writes are
    idempotent."""
    rows = session.execute(
        select(ScanItem.image_id, Scan.model_version, Scan.calibration_version)
        .join(Scan, Scan.id == ScanItem.scan_id)
        .where(
            ScanItem.state == "pending",
            (ScanItem.enqueued_at.is_(None) & (ScanItem.updated_at < created_before))
            | (ScanItem.enqueued_at < requeue_before),
        )
        .distinct()
        .limit(limit)
    ).all()
    return [PendingWork(*row) for row in rows]


def mark_enqueued(session: Session, image_ids: Sequence[int]) -> None:
    session.execute(
        update(ScanItem)
        .where(ScanItem.image_id.in_(image_ids), ScanItem.state == "pending")
        .values(enqueued_at=utcnow())
    )


def oldest_pending_age_s(session: Session) -> float | None:
    """How long the oldest unfinished image has waited since its scan was submitted (handing it over again
    does not make it younger)."""
    oldest = session.scalar(
        select(func.min(Scan.created_at)).join(ScanItem, ScanItem.scan_id == Scan.id).where(ScanItem.state == "pending")
    )
    return (utcnow() - oldest).total_seconds() if oldest is not None else None


# --- the worker's writes ---------------------------------------------------------------------------------------


def images_to_analyse(
    session: Session, image_ids: Sequence[int], model_version: str, calibration_version: str
) -> list[Image]:
    """The images among ``image_ids`` with no verdict yet for these versions (a redelivered task skips the
    ones already done)."""
    done = exists().where(
        Verdict.image_id == Image.id,
        Verdict.model_version == model_version,
        Verdict.calibration_version == calibration_version,
    )
    return list(session.scalars(select(Image).where(Image.id.in_(image_ids), ~done).order_by(Image.id)))


def blobs_of(session: Session, image_ids: Sequence[int]) -> list[bytes]:
    """The bytes of these images, in the same order."""
    rows = dict(
        session.execute(select(ImageBlob.image_id, ImageBlob.data).where(ImageBlob.image_id.in_(image_ids))).all()
    )
    return [rows[image_id] for image_id in image_ids]


def blobs_by_sha256(session: Session, sha256s: Sequence[str]) -> list[bytes]:
    """The stored bytes of these images (those that exist), in the given order."""
    rows = dict(
        session.execute(
            select(Image.sha256, ImageBlob.data)
            .join(ImageBlob, ImageBlob.image_id == Image.id)
            .where(Image.sha256.in_(list(sha256s)))
        ).all()
    )
    return [rows[sha] for sha in sha256s if sha in rows]


def count_attempt(session: Session, image_ids: Sequence[int], level: int | None = None) -> None:
    """One more analysis of these images is starting (committed before the engine runs): each one's attempts
    go up by one, or to ``level`` (a careful delivery puts every image it starts one above all pending)."""
    attempts = Image.attempts + 1 if level is None else level
    session.execute(update(Image).where(Image.id.in_(image_ids)).values(attempts=attempts))


def write_verdicts(session: Session, verdicts: dict[int, dict[str, Any]]) -> None:
    """Verdicts of a batch (image id -> ``Verdict.to_dict()``), written with a few statements whatever the batch
    size.  Idempotent: a second write for the same image and versions (a redelivered task) changes nothing."""
    if not verdicts:
        return
    now = utcnow()
    rows = [_verdict_row(image_id, verdict, now) for image_id, verdict in verdicts.items()]
    unique = ["image_id", "model_version", "calibration_version"]
    session.execute(_insert_for(session)(Verdict).on_conflict_do_nothing(index_elements=unique), rows)
    session.execute(update(Image).where(Image.id.in_(list(verdicts))).values(attempts=0))
    first = next(iter(verdicts.values()))
    _settle_items(session, list(verdicts), first["model_version"], first["calibration_version"], "done", None)


_VERDICT_FIELDS = (
    "model_version",
    "calibration_version",
    "label",
    "label_index",
    "confidence",
    "in_domain",
    "top_k",
    "scores",
    "combined",
    "flagged",
    "threshold",
    "timings_ms",
)


def _verdict_row(image_id: int, verdict: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    return {**{key: verdict.get(key) for key in _VERDICT_FIELDS}, "image_id": image_id, "created_at": now}


def fail_image(
    session: Session, image_id: int, model_version: str, calibration_version: str, code: str, message: str
) -> None:
    session.execute(update(Image).where(Image.id == image_id).values(attempts=0))
    _settle_items(session, [image_id], model_version, calibration_version, "failed", (code, message))


def dead_letter(
    session: Session, image: Image, model_version: str, calibration_version: str, task_id: str | None, reason: str
) -> None:
    session.add(
        DeadLetter(
            image_id=image.id,
            model_version=model_version,
            task_id=task_id,
            reason=reason,
            deliveries=image.attempts,
        )
    )
    fail_image(
        session,
        image.id,
        model_version,
        calibration_version,
        "dead_lettered",
        f"the analysis failed {image.attempts} times: {reason}",
    )


def _settle_items(
    session: Session,
    image_ids: Sequence[int],
    model_version: str,
    calibration_version: str,
    state: str,
    error: tuple[str, str] | None,
) -> None:
    """Pending items of these images, in scans that asked for these versions, become done or failed."""
    same_versions = exists().where(
        Scan.id == ScanItem.scan_id,
        Scan.model_version == model_version,
        Scan.calibration_version == calibration_version,
    )
    items = and_(ScanItem.image_id.in_(image_ids), ScanItem.state == "pending", same_versions)
    scan_ids = set(session.scalars(select(ScanItem.scan_id).where(items)))
    code, message = error or (None, None)
    session.execute(
        update(ScanItem).where(items).values(state=state, error_code=code, error_message=message, updated_at=utcnow())
    )
    finish_scan_if_complete(session, scan_ids)


# --- reads for the API ------------------------------------------------------------------------------------------


def scan_of(session: Session, tenant_id: int, scan_id: str) -> Scan | None:
    return session.scalar(select(Scan).where(Scan.id == scan_id, Scan.tenant_id == tenant_id))


def scan_items(session: Session, scan: Scan) -> list[tuple[ScanItem, Image | None, Verdict | None]]:
    verdict_join = and_(
        Verdict.image_id == ScanItem.image_id,
        Verdict.model_version == scan.model_version,
        Verdict.calibration_version == scan.calibration_version,
    )
    query = (
        select(ScanItem, Image, Verdict)
        .where(ScanItem.scan_id == scan.id)
        .outerjoin(Image, Image.id == ScanItem.image_id)
        .outerjoin(Verdict, verdict_join)
        .order_by(ScanItem.position)
    )
    return [tuple(row) for row in session.execute(query).all()]  # type: ignore[misc]


def image_seen_by(session: Session, tenant_id: int, sha256: str) -> tuple[Image, dict[str, Any]] | None:
    """The image and this tenant's own first/last sighting and count, or None if the tenant never met it."""
    image = session.scalar(select(Image).where(Image.sha256 == sha256))
    if image is None:
        return None
    first, last, count = session.execute(
        select(func.min(Sighting.seen_at), func.max(Sighting.seen_at), func.count()).where(
            Sighting.tenant_id == tenant_id, Sighting.image_id == image.id
        )
    ).one()
    if not count:
        return None
    return image, {"first_seen": _aware(first), "last_seen": _aware(last), "sightings": count}


def add_feedback(
    session: Session,
    tenant_id: int,
    image_id: int,
    key_id: str | None,
    kind: str,
    model_version: str,
    calibration_version: str,
    page_url: str | None,
    note: str | None,
) -> Feedback:
    feedback = Feedback(
        tenant_id=tenant_id,
        image_id=image_id,
        key_id=key_id,
        kind=kind,
        model_version=model_version,
        calibration_version=calibration_version,
        page_url=page_url,
        note=note,
        created_at=utcnow(),
    )
    session.add(feedback)
    session.flush()
    return feedback


def withdraw_feedback(session: Session, tenant_id: int, image_id: int, kind: str) -> int:
    """Undo: delete this tenant's feedback of ``kind`` on the image (whoever of the tenant gave it); how many."""
    result = session.execute(
        delete(Feedback).where(Feedback.tenant_id == tenant_id, Feedback.image_id == image_id, Feedback.kind == kind)
    )
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def feedback_counts(session: Session, tenant_id: int, image_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Feedback.kind, func.count())
        .where(Feedback.tenant_id == tenant_id, Feedback.image_id == image_id)
        .group_by(Feedback.kind)
    )
    return {kind: count for kind, count in rows}


def false_flagged(session: Session, tenant_id: int, image_ids: Sequence[int]) -> set[int]:
    """Which of these images this tenant has called a false flag."""
    if not image_ids:
        return set()
    query = select(Feedback.image_id).where(
        Feedback.tenant_id == tenant_id, Feedback.kind == "false_flag", Feedback.image_id.in_(image_ids)
    )
    return set(session.scalars(query.distinct()))


def verdicts_of(session: Session, image_id: int) -> list[Verdict]:
    return list(session.scalars(select(Verdict).where(Verdict.image_id == image_id).order_by(Verdict.id.desc())))


def recent_sightings(
    session: Session, tenant_id: int, image_id: int, limit: int = 20
) -> list[tuple[Sighting, str | None]]:
    query = (
        select(Sighting, Site.host)
        .outerjoin(Site, Site.id == Sighting.site_id)
        .where(Sighting.tenant_id == tenant_id, Sighting.image_id == image_id)
        .order_by(Sighting.id.desc())
        .limit(limit)
    )
    return [tuple(row) for row in session.execute(query).all()]  # type: ignore[misc]


@dataclass(frozen=True)
class FlaggedFilter:
    tenant_id: int
    model_version: str
    calibration_version: str
    site: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_score: float | None = None
    label: str | None = None
    after_id: int | None = None  # the cursor: verdict ids strictly below it (newest first)
    limit: int = 100
    false_flag: bool | None = None  # True: only the tenant's confirmed false flags; False: none of them


def confirmed_false_flag(tenant_id: int, image_id: Any) -> Any:
    """True where this tenant has said "this is a false flag" about the image (an SQL expression)."""
    return exists().where(
        Feedback.tenant_id == tenant_id, Feedback.image_id == image_id, Feedback.kind == "false_flag"
    )


NO_CONFIDENT_CLASS = "none"  # the label filter's value for verdicts without a confident class


def flagged_report(session: Session, report: FlaggedFilter) -> list[dict[str, Any]]:
    """Flagged verdicts of images this tenant saw (on ``site``, between ``since`` and ``until``), newest first,
    with the latest matching sighting of each."""
    seen = [Sighting.tenant_id == report.tenant_id, Sighting.image_id == Verdict.image_id]
    if report.site:
        host = site_host(report.site)
        seen.append(Sighting.site_id.in_(select(Site.id).where(Site.tenant_id == report.tenant_id, Site.host == host)))
    if report.since:
        seen.append(Sighting.seen_at >= report.since)
    if report.until:
        seen.append(Sighting.seen_at < report.until)
    latest = select(func.max(Sighting.id)).where(*seen).correlate(Verdict).scalar_subquery()
    false_flag = confirmed_false_flag(report.tenant_id, Verdict.image_id)
    query: Select[Any] = (
        select(Verdict, Image, Sighting, Site.host, false_flag.label("false_flag"))
        .join(Image, Image.id == Verdict.image_id)
        .join(Sighting, Sighting.id == latest)
        .outerjoin(Site, Site.id == Sighting.site_id)
        .where(
            Verdict.flagged.is_(True),
            Verdict.model_version == report.model_version,
            Verdict.calibration_version == report.calibration_version,
        )
    )
    if report.min_score is not None:
        query = query.where(Verdict.combined >= report.min_score)
    if report.label == NO_CONFIDENT_CLASS:
        query = query.where(Verdict.label.is_(None))
    elif report.label:
        query = query.where(Verdict.label == report.label)
    if report.false_flag is not None:
        query = query.where(false_flag if report.false_flag else ~false_flag)
    if report.after_id is not None:
        query = query.where(Verdict.id < report.after_id)
    rows = session.execute(query.order_by(Verdict.id.desc()).limit(report.limit)).all()
    return [
        {
            "verdict_id": verdict.id,
            "sha256": image.sha256,
            "label": verdict.label,
            "confidence": verdict.confidence,
            "in_domain": verdict.in_domain,
            "score": verdict.combined,
            "threshold": verdict.threshold,
            "site": host,
            "page_url": sighting.page_url,
            "image_url": sighting.image_url,
            "seen_at": _aware(sighting.seen_at),
            "analysed_at": _aware(verdict.created_at),
            "model_version": verdict.model_version,
            "calibration_version": verdict.calibration_version,
            "false_flag": bool(is_false_flag),
        }
        for verdict, image, sighting, host, is_false_flag in rows
    ]


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """Aggregates (min/max) bypass the column type, so SQLite hands back naive UTC values."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
