"""The routes of the API.  Each handler: check the scope, run the database work in a thread, answer JSON."""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import datetime as dt
import io
import json
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scanner import intake as intake_path
from scanner.api import intake, streams
from scanner.api.context import KEY, SERVICES, in_thread, json_body, require_scope, services
from scanner.api.problems import Problem
from scanner.api.schemas import FeedbackRequest, FlaggedRow
from scanner.api.text import is_clean
from scanner.csvsafe import safe_row
from scanner.db import queries
from scanner.db.models import Tenant
from scanner.db.session import transaction
from scanner.intake import iso as _iso
from scanner.intake import verdict_json

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SSE_POLL_S = 0.5
SSE_MAX_S = 600.0
SCAN_SCOPES = ("scans:write", "reports:read")


def add_routes(app: web.Application) -> None:
    streams.install(app, app[SERVICES].settings.event_streams_per_key)
    app.router.add_post("/v1/scans", create_scan)
    app.router.add_get("/v1/scans/{scan_id}", get_scan)
    app.router.add_get("/v1/scans/{scan_id}/events", scan_events)
    app.router.add_get("/v1/images/{sha256}", get_image)
    app.router.add_post("/v1/images/{sha256}/feedback", post_feedback)
    app.router.add_delete("/v1/images/{sha256}/feedback/{kind}", delete_feedback)
    app.router.add_get("/v1/reports/flagged", flagged_report)
    app.router.add_get("/v1/me", whoami)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)


# --- scans ---------------------------------------------------------------------------------------------------


async def create_scan(request: web.Request) -> web.Response:
    key = require_scope(request, "scans:write")
    svc = services(request)
    submission = await intake.read_submission(request, svc.settings)
    assert svc.sessions is not None and svc.dispatcher is not None
    # The hand-over runs in the background: the work is in the database (the outbox) already, so a broker
    # outage never holds the 202.
    scan_id, pending = await intake_path.take(
        svc.settings, svc.sessions, svc.versions, svc.dispatcher, key.tenant_id, submission, background=True
    )
    document = await in_thread(scan_document, request, key.tenant_id, scan_id)
    counts = document["counts"]
    svc.metrics.images.labels("refused").inc(counts["failed"])
    svc.metrics.images.labels("queued").inc(len(pending))
    svc.metrics.images.labels("known").inc(counts["total"] - counts["failed"] - len(pending))
    status = 201 if document["status"] == "done" else 202
    return web.json_response(document, status=status, headers={"Location": f"/v1/scans/{scan_id}"})


async def get_scan(request: web.Request) -> web.Response:
    key = require_scope(request, *SCAN_SCOPES)
    document = await in_thread(scan_document, request, key.tenant_id, request.match_info["scan_id"])
    return web.json_response(document)


def scan_document(request: web.Request, tenant_id: int, scan_id: str) -> dict[str, Any]:
    # An id with a NUL (or other text no database stores) names no scan: 404, not a database error.
    document = (
        intake_path.scan_document(services(request).sessions, tenant_id, scan_id)  # type: ignore[arg-type]
        if is_clean(scan_id)
        else None
    )
    if document is None:
        raise Problem(404, "scan_not_found", f"no scan {scan_id} for this key's tenant")
    return document


async def scan_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``item`` as each image settles, ``progress`` on every change, ``done`` at the end
    (``timeout`` after ``SSE_MAX_S``, ``closing`` when the server shuts down).  Polling stops when the client
    leaves; a key holds at most ``event_streams_per_key`` streams (``scanner.api.streams``)."""
    key = require_scope(request, *SCAN_SCOPES)
    scan_id = request.match_info["scan_id"]
    document = await in_thread(scan_document, request, key.tenant_id, scan_id)  # 404 before the stream starts
    async with streams.stream_slot(request, key.id) as open_streams:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client left mid-write: nothing more to send
            await _stream(request, response, open_streams, key.tenant_id, scan_id, document)
        return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    open_streams: streams.EventStreams,
    tenant_id: int,
    scan_id: str,
    document: dict[str, Any],
) -> None:
    settled: set[int] = set()
    last_counts = None
    started = time.monotonic()
    while True:
        for item in document["items"]:
            if item["state"] != "pending" and item["position"] not in settled:
                settled.add(item["position"])
                await _event(response, "item", item)
        if document["counts"] != last_counts:
            last_counts = document["counts"]
            await _event(response, "progress", {"status": document["status"], "counts": last_counts})
        if document["status"] == "done" or time.monotonic() - started > SSE_MAX_S:
            await _event(response, "done" if document["status"] == "done" else "timeout", document)
            break
        if await streams.pause(open_streams, SSE_POLL_S):
            await _event(response, "closing", {"detail": "the server is shutting down: reconnect later"})
            break
        if streams.client_gone(request):
            return
        document = await in_thread(scan_document, request, tenant_id, scan_id)
    await response.write_eof()


async def _event(response: web.StreamResponse, name: str, data: Any) -> None:
    await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


# --- images and reports ----------------------------------------------------------------------------------------


async def get_image(request: web.Request) -> web.Response:
    key = require_scope(request, "reports:read")
    sha256 = request.match_info["sha256"].lower()
    if not SHA256.match(sha256):
        raise Problem(404, "image_not_found", "an image is named by the 64 hex digits of its sha256")
    return web.json_response(await in_thread(_image_document, request, key.tenant_id, sha256))


def _image_document(request: web.Request, tenant_id: int, sha256: str) -> dict[str, Any]:
    with services(request).sessions() as session:  # type: ignore[misc]
        found = queries.image_seen_by(session, tenant_id, sha256)
        if found is None:
            raise Problem(404, "image_not_found", f"this key's tenant has not submitted the image {sha256}")
        image, seen = found
        sightings = [
            {
                "site": host,
                "page_url": s.page_url,
                "image_url": s.image_url,
                "source": s.source,
                "seen_at": _iso(s.seen_at),
            }
            for s, host in queries.recent_sightings(session, tenant_id, image.id)
        ]
        return {
            "sha256": image.sha256,
            "format": image.format,
            "byte_size": image.byte_size,
            "width": image.width,
            "height": image.height,
            "first_seen": _iso(seen["first_seen"]),
            "last_seen": _iso(seen["last_seen"]),
            "sightings": seen["sightings"],
            "recent_sightings": sightings,
            "verdicts": [verdict_json(v, seen["first_seen"]) for v in queries.verdicts_of(session, image.id)],
            "feedback": queries.feedback_counts(session, tenant_id, image.id),
        }


async def post_feedback(request: web.Request) -> web.Response:
    """ "This is a false flag" (or a missed one) from a person, kept against the verdict's versions so that a
    calibration can be checked against what people reported."""
    key = require_scope(request, "scans:write")
    sha256 = request.match_info["sha256"].lower()
    body = await json_body(request, FeedbackRequest)
    document = await in_thread(_record_feedback, request, key, sha256, body)
    return web.json_response(document, status=201)


def _record_feedback(request: web.Request, key: Any, sha256: str, body: FeedbackRequest) -> dict[str, Any]:
    svc = services(request)
    with transaction(svc.sessions) as session:  # type: ignore[arg-type]
        found = queries.image_seen_by(session, key.tenant_id, sha256) if SHA256.match(sha256) else None
        if found is None:
            raise Problem(404, "image_not_found", f"this key's tenant has not submitted the image {sha256}")
        feedback = queries.add_feedback(
            session,
            key.tenant_id,
            found[0].id,
            key.id,
            body.kind,
            svc.versions.model_version,
            svc.versions.calibration_version,
            body.page_url,
            body.note,
        )
        return {
            "id": feedback.id,
            "sha256": sha256,
            "kind": feedback.kind,
            "model_version": feedback.model_version,
            "calibration_version": feedback.calibration_version,
            "created_at": _iso(feedback.created_at),
        }


async def delete_feedback(request: web.Request) -> web.Response:
    """Undo "this is a false flag" (or "missed"): the tenant's feedback of that kind on the image is withdrawn."""
    key = require_scope(request, "scans:write")
    sha256, kind = request.match_info["sha256"].lower(), request.match_info["kind"]
    if kind not in ("false_flag", "missed"):
        raise Problem(404, "unknown_feedback_kind", "the kinds of feedback are false_flag and missed")
    await in_thread(_withdraw_feedback, request, key.tenant_id, sha256, kind)
    return web.Response(status=204)


def _withdraw_feedback(request: web.Request, tenant_id: int, sha256: str, kind: str) -> None:
    with transaction(services(request).sessions) as session:  # type: ignore[arg-type]
        found = queries.image_seen_by(session, tenant_id, sha256) if SHA256.match(sha256) else None
        if found is None:
            raise Problem(404, "image_not_found", f"this key's tenant has not submitted the image {sha256}")
        queries.withdraw_feedback(session, tenant_id, found[0].id, kind)


CSV_COLUMNS = list(FlaggedRow.model_fields)


async def flagged_report(request: web.Request) -> web.Response:
    """Flagged images this tenant met, newest first; ``format=csv`` (or ``Accept: text/csv``) for a spreadsheet.
    Keyset pagination: the ``next_cursor`` of a page (also in ``Link`` and ``X-Next-Cursor``) gives the next."""
    key = require_scope(request, "reports:read")
    svc = services(request)
    query = request.query
    report = queries.FlaggedFilter(
        tenant_id=key.tenant_id,
        model_version=query.get("model_version", svc.versions.model_version),
        calibration_version=query.get("calibration_version", svc.versions.calibration_version),
        site=query.get("site") or None,
        since=_time_param(query, "since"),
        until=_time_param(query, "until"),
        min_score=_float_param(query, "min_score"),
        label=query.get("label") or None,
        false_flag=_bool_param(query, "false_flag"),
        after_id=_after_id(query.get("cursor")),
        limit=_limit_param(query),
    )
    rows = await in_thread(_flagged_rows, request, report)
    next_cursor = _encode_cursor(rows[-1]["verdict_id"]) if len(rows) == report.limit else None
    headers = {}
    if next_cursor:
        headers["X-Next-Cursor"] = next_cursor
        headers["Link"] = f'<{request.rel_url.update_query(cursor=next_cursor)}>; rel="next"'
    wants_csv = query.get("format") == "csv" or (
        "format" not in query and "text/csv" in request.headers.get("Accept", "")
    )
    if query.get("format") not in (None, "json", "csv"):
        raise Problem(422, "invalid_parameter", "format must be json or csv")
    items = [{column: _plain(row[column]) for column in CSV_COLUMNS} for row in rows]
    if wants_csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(safe_row(item) for item in items)  # no cell a spreadsheet would run as a formula
        return web.Response(text=buffer.getvalue(), content_type="text/csv", headers=headers)
    return web.json_response({"items": items, "next_cursor": next_cursor}, headers=headers)


def _flagged_rows(request: web.Request, report: queries.FlaggedFilter) -> list[dict[str, Any]]:
    with services(request).sessions() as session:  # type: ignore[misc]
        return queries.flagged_report(session, report)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _time_param(query: Any, name: str) -> dt.datetime | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except (ValueError, OverflowError) as err:  # not a time, or one that leaves the calendar once in UTC
        raise Problem(422, "invalid_parameter", f"{name} must be an ISO 8601 time, e.g. 2026-11-25T12:00:00Z") from err


def _bool_param(query: Any, name: str) -> bool | None:
    if name not in query:
        return None
    if query[name] not in ("true", "false"):
        raise Problem(422, "invalid_parameter", f"{name} must be true or false")
    return query[name] == "true"


def _float_param(query: Any, name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError as err:
        raise Problem(422, "invalid_parameter", f"{name} must be a number") from err
    if value != value or value in (float("inf"), float("-inf")):
        raise Problem(422, "invalid_parameter", f"{name} must be finite")
    return value


def _limit_param(query: Any) -> int:
    raw = query.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= 1000:
        raise Problem(422, "invalid_parameter", "limit must be an integer from 1 to 1000")
    return int(raw)


def _encode_cursor(verdict_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{verdict_id}".encode()).decode().rstrip("=")


def _after_id(cursor: str | None) -> int | None:
    """The cursor's row id; none past the largest id PostgreSQL's integer ids can have (every row comes before
    it, and so large a number must not reach a query: PostgreSQL refuses it as out of range)."""
    after_id = _decode_cursor(cursor) if cursor else None
    return after_id if after_id is not None and after_id <= 2**31 - 1 else None


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = raw.partition(":")
        if version != "v1" or not re.fullmatch(r"[0-9]{1,18}", value):  # a 64-bit row id
            raise ValueError(raw)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        raise Problem(422, "invalid_cursor", "the cursor is not one this API issued") from err


async def whoami(request: web.Request) -> web.Response:
    """The key this request carries: lets a client (the extension's options page, ``scanner crawl --api``)
    check its key before it starts work."""
    key = request[KEY]
    tenant = await in_thread(_tenant_name, request, key.tenant_id)
    expires = _iso(key.expires_at)
    return web.json_response(
        {"id": key.id, "name": key.name, "tenant": tenant, "scopes": key.scopes.split(), "expires_at": expires}
    )


def _tenant_name(request: web.Request, tenant_id: int) -> str:
    with services(request).sessions() as session:  # type: ignore[misc]
        return session.get(Tenant, tenant_id).name  # type: ignore[union-attr]


# --- operations ----------------------------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(services(request).metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")
