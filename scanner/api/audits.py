"""The audit routes: ``/v1/audits`` (create, list, delete) and ``/v1/audits/{audit_id}/runs`` (history, trigger).

Tenant-scoped like every ``/v1/`` route: an audit of another tenant is answered as not found.  A triggered run
takes the run lock here, in the request (409 ``already_running`` when it is held; 429 ``too_many_runs`` past
``audit_manual_runs_per_hour``), waits ``queued`` until the tenant's and the runner's limits admit it, and
executes where the analysis does: a Celery worker in the distributed mode (the task ``scanner.audits.run``), a
background task of this process in the embedded mode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import re
from typing import Any

from aiohttp import web

from scanner import secretbox
from scanner.api.context import in_thread, json_body, require_scope, services
from scanner.api.patterns import CRON, EVERY, TARGET_URL
from scanner.api.problems import Problem
from scanner.api.schemas import AuditRequest
from scanner.audits import spec as audit_spec
from scanner.audits import store
from scanner.db.models import Audit, AuditRun, utcnow
from scanner.db.session import transaction

BACKGROUND = web.AppKey("audit_background", set)
AUDIT_ID = re.compile(r"^[0-9]{1,18}$")
TRIGGER_WINDOW = dt.timedelta(hours=1)
MAX_ROW_ID = 2**31 - 1  # ids are PostgreSQL integers: a larger one names no row (and must not reach a query)


def add_routes(app: web.Application) -> None:
    app[BACKGROUND] = set()
    app.router.add_post("/v1/audits", create_audit)
    app.router.add_get("/v1/audits", list_audits)
    app.router.add_delete("/v1/audits/{audit_id}", delete_audit)
    app.router.add_get("/v1/audits/{audit_id}/runs", list_runs)
    app.router.add_post("/v1/audits/{audit_id}/runs", trigger_run)
    app.on_cleanup.append(_cancel_background)


async def _cancel_background(app: web.Application) -> None:
    for task in list(app[BACKGROUND]):
        task.cancel()
    await asyncio.gather(*app[BACKGROUND], return_exceptions=True)


def _audit_id(request: web.Request) -> int:
    raw = request.match_info["audit_id"]
    if not AUDIT_ID.match(raw) or int(raw) > MAX_ROW_ID:
        raise Problem(404, "audit_not_found", f"no audit {raw} for this key's tenant")
    return int(raw)


def _not_found(audit_id: int) -> Problem:
    return Problem(404, "audit_not_found", f"no audit {audit_id} for this key's tenant")


async def create_audit(request: web.Request) -> web.Response:
    key = require_scope(request, "scans:write")
    body = await json_body(request, AuditRequest)
    spec = _spec(body, services(request).settings)
    await check_start_url(spec.start_url, services(request).settings)
    if spec.webhook_url:
        await check_target_url("webhook_url", spec.webhook_url, services(request).settings)
    document = await in_thread(_create, request, key.tenant_id, spec)
    return web.json_response(document, status=201, headers={"Location": f"/v1/audits/{document['id']}/runs"})


def _spec(body: AuditRequest, settings: Any) -> store.AuditSpec:
    from scanner.audits.schedule import interval_text
    from scanner.crawl.patterns import pattern_error

    if (body.every is None) == (body.cron is None):
        raise Problem(422, "invalid_schedule", "give exactly one of every and cron")
    if body.every is not None and not re.fullmatch(EVERY, body.every):
        raise Problem(422, "invalid_schedule", "every is a number of 1 to 3 digits and s, m, h or d: 30s, 6h")
    if body.cron is not None and not re.fullmatch(CRON, body.cron):
        raise Problem(422, "invalid_schedule", 'cron fields are "*", "*/step" or a number, e.g. "0 3 * * *"')
    if not re.fullmatch(TARGET_URL, body.start_url):
        raise Problem(422, "invalid_start_url", "start_url must be an absolute http(s) URL")
    for pattern in (*(body.include or ()), *(body.exclude or ())):
        if (error := pattern_error(pattern)) is not None:
            raise Problem(422, "invalid_pattern", f"include/exclude: {error}")
    if body.webhook_url is not None and not re.fullmatch(TARGET_URL, body.webhook_url):
        raise Problem(422, "invalid_body", "webhook_url must be an absolute http(s) URL")
    try:
        spec = audit_spec.spec_from(
            body.start_url,
            interval_text(body.every) if body.every is not None else body.cron or "",
            **body.model_dump(exclude={"start_url", "every", "cron"}),
        )
        audit_spec.check_webhook(spec, None)
    except ValueError as err:
        code = "invalid_schedule" if "schedule" in str(err) or "interval" in str(err) else "invalid_body"
        raise Problem(422, code, str(err)) from err
    return spec


async def check_start_url(start_url: str, settings: Any) -> None:
    """Refuse a start URL the fetcher would refuse (422 with its code: bad_url, blocked_address, blocked_port):
    the run crawls it from inside our network on the tenant's behalf."""
    await check_target_url("start_url", start_url, settings)


async def check_target_url(field: str, url: str, settings: Any) -> None:
    """``check_start_url`` for any URL the service will request later (a webhook is POSTed to from inside our
    network too): refused now, with the fetcher's code, rather than at every run."""
    from scanner.api.intake import fetch_policy
    from scanner.fetch import FetchError, check_target

    try:
        await check_target(url, fetch_policy(settings))
    except FetchError as err:
        raise Problem(422, err.code, f"{field}: {err.message}") from err


def _check_frequency(schedule: str, settings: Any) -> None:
    """Each audit crawls a site with a browser: no schedule may fire more often than the settings allow."""
    from scanner.audits.schedule import parse

    moments = [parse(schedule).next_after(utcnow())]
    for _ in range(4):  # a cron schedule's gaps vary: the smallest of a few counts
        moments.append(parse(schedule).next_after(moments[-1]))
    gap = min((later - earlier).total_seconds() for earlier, later in zip(moments, moments[1:], strict=False))
    if gap < settings.audit_min_interval_s:
        raise Problem(422, "schedule_too_frequent", f"an audit may run at most every {settings.audit_min_interval_s} s")


def _create(request: web.Request, tenant_id: int, spec: store.AuditSpec) -> dict[str, Any]:
    from scanner.audits.schedule import parse

    settings = services(request).settings
    _check_frequency(spec.schedule, settings)
    spec = dataclasses.replace(spec, webhook_secret=secretbox.encrypt(settings, spec.webhook_secret))
    with transaction(services(request).sessions) as session:  # type: ignore[arg-type]
        if len(store.audits_of(session, tenant_id)) >= settings.audits_per_tenant:
            raise Problem(403, "quota_exceeded", f"a tenant may keep at most {settings.audits_per_tenant} audits")
        try:
            audit = store.create_audit(session, tenant_id, spec, parse(spec.schedule).next_after(utcnow()))
        except ValueError as err:
            raise Problem(422, "invalid_start_url", str(err)) from err
        return audit_json(audit, store.host_of(session, audit))


async def list_audits(request: web.Request) -> web.Response:
    key = require_scope(request, "reports:read")
    return web.json_response({"items": await in_thread(_list, request, key.tenant_id)})


def _list(request: web.Request, tenant_id: int) -> list[dict[str, Any]]:
    with services(request).sessions() as session:  # type: ignore[misc]
        return [audit_json(audit, host) for audit, host in store.audits_of(session, tenant_id)]


async def delete_audit(request: web.Request) -> web.Response:
    key = require_scope(request, "scans:write")
    audit_id = _audit_id(request)
    if not await in_thread(_delete, request, key.tenant_id, audit_id):
        raise _not_found(audit_id)
    return web.Response(status=204)


def _delete(request: web.Request, tenant_id: int, audit_id: int) -> bool:
    with transaction(services(request).sessions) as session:  # type: ignore[arg-type]
        return store.remove_audit(session, tenant_id, audit_id)


async def list_runs(request: web.Request) -> web.Response:
    key = require_scope(request, "reports:read")
    return web.json_response({"items": await in_thread(_runs, request, key.tenant_id, _audit_id(request))})


def _runs(request: web.Request, tenant_id: int, audit_id: int) -> list[dict[str, Any]]:
    with services(request).sessions() as session:  # type: ignore[misc]
        if store.audit_of(session, tenant_id, audit_id) is None:
            raise _not_found(audit_id)
        return [run_json(run) for run in store.runs_of(session, audit_id)]


async def trigger_run(request: web.Request) -> web.Response:
    key = require_scope(request, "scans:write")
    audit_id = _audit_id(request)
    document = await in_thread(_claim, request, key.tenant_id, audit_id)
    await _start(request, document["id"])
    return web.json_response(document, status=202)


def _claim(request: web.Request, tenant_id: int, audit_id: int) -> dict[str, Any]:
    from scanner.audits.runner import owner_id

    with transaction(services(request).sessions) as session:  # type: ignore[arg-type]
        if store.audit_of(session, tenant_id, audit_id) is None:
            raise _not_found(audit_id)
        _check_trigger_rate(session, audit_id, services(request).settings.audit_manual_runs_per_hour)
        try:
            run_id = store.claim_run(session, audit_id, f"api:{owner_id()}", "manual")
        except store.AlreadyRunning as err:
            raise Problem(409, "already_running", str(err)) from err
    with services(request).sessions() as session:  # type: ignore[misc]
        return run_json(session.get_one(AuditRun, run_id))


def _check_trigger_rate(session: Any, audit_id: int, per_hour: int) -> None:
    """At most ``per_hour`` manual runs of an audit in any hour (counted in the database, so every API process
    and restart agrees): 429 ``too_many_runs`` with the seconds until the oldest leaves the hour."""
    now = utcnow()
    recent = store.manual_runs_since(session, audit_id, now - TRIGGER_WINDOW)
    if len(recent) >= per_hour:
        wait = (recent[-per_hour] + TRIGGER_WINDOW - now).total_seconds()
        raise Problem(
            429,
            "too_many_runs",
            f"an audit may be triggered at most {per_hour} times an hour",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )


async def _start(request: web.Request, run_id: int) -> None:
    settings = services(request).settings
    if settings.embedded:
        from scanner.audits.runner import execute_run

        task = asyncio.create_task(execute_run(settings, run_id))
        request.app[BACKGROUND].add(task)
        task.add_done_callback(request.app[BACKGROUND].discard)
        return
    from scanner.analysis.celery_app import make_celery
    from scanner.audits.tasks import RUN_TASK

    await in_thread(lambda: make_celery(settings).send_task(RUN_TASK, args=[run_id]))


def audit_json(audit: Audit, host: str) -> dict[str, Any]:
    return {
        "id": audit.id,
        "name": audit.name,
        "site": host,
        "start_url": audit.start_url,
        "schedule": audit.schedule,
        "max_pages": audit.max_pages,
        "max_depth": audit.max_depth,
        "include": list(audit.include or []),
        "exclude": list(audit.exclude or []),
        "webhook_url": audit.webhook_url,
        "missed_run_policy": audit.missed_run_policy,
        "enabled": audit.enabled,
        "robustness_sample": audit.robustness_sample,
        "allow_private": audit.allow_private,
        "created_at": _iso(audit.created_at),
        "last_run_at": _iso(audit.last_run_at),
        "next_run_at": _iso(audit.next_run_at),
    }


def run_json(run: AuditRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "audit_id": run.audit_id,
        "status": run.status,
        "trigger": run.trigger,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "pages": run.pages,
        "images": run.images,
        "flagged": run.flagged,
        "newly_flagged": run.newly_flagged,
        "gone": run.gone,
        "changed": run.changed,
        "error": run.error,
        "error_code": run.error_code,
        "robustness": run.robustness,
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
