"""One way in for images: fetch what was given as URLs (SSRF-safe), check each header under the pixel and format
caps, hash, record the scan and its sightings, and hand the new work to the analysis.

``take`` is that path.  The API's ``POST /v1/scans`` calls it after reading the request; so does the local
submitter (``scanner.local``) of ``scanner crawl`` without ``--api`` and of the audit runs, so no process talks
HTTP to itself.  An image that cannot be taken (a bad URL, a private address, a decompression bomb) becomes a
failed item of the scan with a stable error code; the rest of the scan goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from scanner.db import queries
from scanner.db.models import Image, Scan, Verdict
from scanner.db.session import transaction
from scanner.fetch import FetchError, FetchPolicy, SafeFetcher
from scanner.settings import Settings
from scanner.versions import ServedVersions
from worker.engine.imaging import ImageError, ImageLimits, probe_image

# One item type from the request to the database: what the intake fetches, checks and hashes is what
# ``queries.add_items`` records.  ``Entry`` is its name on this side (the API's reader builds them).
Entry = queries.NewItem


@dataclass
class Submission:
    source: str  # extension, crawl, audit or api
    page_url: str | None
    entries: list[Entry]


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=settings.max_image_bytes,
        timeout_s=settings.fetch_timeout_s,
        max_redirects=settings.fetch_max_redirects,
        allow_private=settings.fetch_allow_private,
        allowed_ports=None if settings.fetch_any_port else frozenset({80, 443}),
    )


class Handover(Protocol):
    """Where recorded work goes: Celery, or an analysis thread of this process."""

    async def submit(self, image_ids: Sequence[int], model_version: str, calibration_version: str) -> None: ...

    def submit_soon(self, image_ids: Sequence[int], model_version: str, calibration_version: str) -> None: ...


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


async def take(
    settings: Settings,
    sessions: sessionmaker[Session],
    versions: ServedVersions,
    handover: Handover,
    tenant_id: int,
    submission: Submission,
    *,
    background: bool = False,
) -> tuple[str, list[int]]:
    """Fetch, check, record and hand over one submission; the scan's id and the image ids handed over.
    ``background``: hand over without waiting (the API: the database is the outbox, so a broker outage must
    not hold the answer; the dispatcher's relay retries)."""
    await fetch_entries(submission.entries, fetch_policy(settings), settings.fetch_concurrency)
    await asyncio.to_thread(check_entries, submission.entries, image_limits(settings))
    scan_id, pending = await asyncio.to_thread(record, sessions, tenant_id, submission, versions)
    if background:
        handover.submit_soon(pending, versions.model_version, versions.calibration_version)
    else:
        await handover.submit(pending, versions.model_version, versions.calibration_version)
    return scan_id, pending


async def fetch_entries(entries: list[Entry], policy: FetchPolicy, concurrency: int) -> None:
    to_fetch = [entry for entry in entries if entry.image_url and entry.filename is None and entry.error is None]
    if not to_fetch:
        return
    async with SafeFetcher(policy) as fetcher:
        results = await fetcher.fetch_many([entry.image_url or "" for entry in to_fetch], concurrency)
    for entry, result in zip(to_fetch, results, strict=True):
        if isinstance(result, FetchError):
            entry.error = (result.code, result.message)
        else:
            entry.data = result.data


def check_entries(entries: list[Entry], limits: ImageLimits) -> None:
    """Header checks and hashing (CPU work: the caller runs it in a thread)."""
    for entry in entries:
        if entry.data is None:
            continue
        try:
            info = probe_image(entry.data, limits)
        except ImageError as err:
            entry.error, entry.data = (err.code, err.message), None
            continue
        entry.sha256 = hashlib.sha256(entry.data).hexdigest()
        entry.format, entry.width, entry.height = info.format, info.width, info.height


def record(
    sessions: sessionmaker[Session], tenant_id: int, submission: Submission, versions: ServedVersions
) -> tuple[str, list[int]]:
    """Store the scan with its items in one transaction; returns its id and the image ids still to analyse."""
    with transaction(sessions) as session:
        scan = queries.new_scan(
            session,
            tenant_id,
            submission.source,
            submission.page_url,
            versions.model_version,
            versions.calibration_version,
        )
        pending = queries.add_items(session, scan, submission.entries)
        queries.finish_scan_if_complete(session, [scan.id])  # every image already known: done at once
        return scan.id, pending


# --- what a scan looks like to its submitter ---------------------------------------------------------------------


def scan_document(sessions: sessionmaker[Session], tenant_id: int, scan_id: str) -> dict[str, Any] | None:
    """The scan as ``GET /v1/scans/{id}`` shows it; None when this tenant has no such scan."""
    with sessions() as session:
        scan = queries.scan_of(session, tenant_id, scan_id)
        if scan is None:
            return None
        rows = queries.scan_items(session, scan)
        image_ids = [image.id for _, image, _ in rows if image]
        # The tenant's own "this is a false flag" travels with the verdict, so a reload shows it as such.
        false_flags = queries.false_flagged(session, tenant_id, image_ids)
        first_seen = queries.tenant_first_seen(session, tenant_id, image_ids)
        return _scan_json(scan, rows, false_flags, first_seen)


def _scan_json(
    scan: Scan,
    rows: list[tuple[Any, Image | None, Verdict | None]],
    false_flags: set[int],
    first_seen: dict[int, dt.datetime],
) -> dict[str, Any]:
    items = []
    counts = {"total": len(rows), "pending": 0, "done": 0, "failed": 0, "flagged": 0}
    for item, image, verdict in rows:
        counts[item.state] += 1
        counts["flagged"] += bool(verdict is not None and verdict.flagged)
        error = {"code": item.error_code, "message": item.error_message} if item.error_code else None
        items.append(
            {
                "position": item.position,
                "image_url": item.image_url,
                "filename": item.filename,
                "sha256": image.sha256 if image else None,
                "state": item.state,
                "error": error,
                "verdict": (
                    verdict_json(verdict, first_seen.get(verdict.image_id))
                    if verdict is not None and item.state == "done"
                    else None
                ),
                "false_flag": image is not None and image.id in false_flags,
            }
        )
    status = "done" if counts["pending"] == 0 else ("running" if counts["pending"] < counts["total"] else "queued")
    return {
        "id": scan.id,
        "status": status,
        "source": scan.source,
        "page_url": scan.page_url,
        "created_at": iso(scan.created_at),
        "finished_at": iso(scan.finished_at) if status == "done" else None,
        "model_version": scan.model_version,
        "calibration_version": scan.calibration_version,
        "counts": counts,
        "items": items,
    }


def verdict_json(verdict: Verdict, not_before: dt.datetime | None = None) -> dict[str, Any]:
    """``not_before``: when the asking tenant first met the image; a verdict made earlier (for another tenant)
    is told as made then, so its time reveals nothing of other tenants."""
    analysed = verdict.created_at if not_before is None else max(verdict.created_at, not_before)
    return {
        "label": verdict.label,
        "confidence": verdict.confidence,
        "in_domain": verdict.in_domain,
        "top_k": verdict.top_k,
        "scores": verdict.scores,
        "score": verdict.combined,
        "threshold": verdict.threshold,
        "flagged": verdict.flagged,
        "model_version": verdict.model_version,
        "calibration_version": verdict.calibration_version,
        "timings_ms": verdict.timings_ms,
        "analysed_at": iso(analysed),
    }


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
