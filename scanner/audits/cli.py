"""``scanner audit add|list|run|history|remove``: audits managed on the configured database (the local SQLite
file in the embedded mode), like ``scanner keys``; ``run`` crawls in the foreground, like ``scanner crawl``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from rich.table import Table

from scanner import secretbox
from scanner.audits import schedule, store
from scanner.audits import spec as spec_rules
from scanner.helpformat import HelpFormatter
from scanner.settings import Settings
from scanner.terminal import console

DEFAULT_TICK_S = 30.0


def add_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="scheduled audits of a site")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    add = audit_sub.add_parser("add", help="audit a site on a schedule", formatter_class=HelpFormatter)
    add.add_argument(
        "site", help="start URL, e.g. https://shop.example/ (a bare host gets https://, a bare 127.0.0.1:8000 http://)"
    )
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", help="interval: 30s, 15m, 6h, 1d")
    when.add_argument("--cron", help='5-field cron expression in UTC, e.g. "0 3 * * *"')
    add.add_argument("--max-pages", type=int, default=100, help="each run stops after this many pages")
    add.add_argument("--max-depth", type=int, default=5, help="links followed from the start page")
    add.add_argument("--include", action="append", default=[], help="regex a URL must match (repeatable)")
    add.add_argument("--exclude", action="append", default=[], help="regex that excludes a URL (repeatable)")
    add.add_argument("--webhook", help="POST a signed summary of each run here")
    add.add_argument("--webhook-secret", help="HMAC-SHA256 key of the webhook signature")
    add.add_argument("--tenant", default="default", help="whose audit (and whose report its images join)")
    add.add_argument("--name", help="a name for lists and the dashboard (default: the site's host)")
    add.add_argument(
        "--missed",
        choices=schedule.MISSED_POLICIES,
        default="run-once",
        help="a slot missed while no scheduler ran: run it once at the next tick, or skip it",
    )
    add.add_argument(
        "--robustness-sample",
        type=int,
        default=0,
        metavar="N",
        help="each run attacks N of the site's images with Square (black box, eps 8/255) and reports the flips",
    )
    add.add_argument("--disabled", action="store_true", help="create it paused")
    add.add_argument(
        "--allow-private",
        action="store_true",
        help="your own local or staging site: its runs may reach private addresses (127.0.0.1, 10.x, ...) and any "
        "port, whatever the server's fetch settings; recorded with the audit and shown by `audit list`",
    )
    audit_sub.add_parser("list", help="list audits").add_argument("--tenant", help="only this tenant's audits")
    audit_id = "the audit's id (`scanner audit list`)"
    audit_sub.add_parser("run", help="run an audit now, in the foreground").add_argument(
        "audit_id", type=int, help=audit_id
    )
    history = audit_sub.add_parser("history", help="the runs of an audit, newest first")
    history.add_argument("audit_id", type=int, help=audit_id)
    history.add_argument("--limit", type=int, default=20, help="at most this many runs (default: 20)")
    audit_sub.add_parser("remove", help="delete an audit and its runs").add_argument(
        "audit_id", type=int, help=audit_id
    )


def add_worker_options(worker: argparse.ArgumentParser) -> None:
    worker.add_argument("--beat", action="store_true", help="also run the audit scheduler (one per deployment)")
    worker.add_argument("--audit-tick", type=float, default=DEFAULT_TICK_S, help="seconds between schedule checks")


def worker_arguments(args: argparse.Namespace, app: Any, settings: Settings) -> list[str]:
    """The audits' part of ``scanner worker``: the audit tasks registered on the worker's app (made by
    ``scanner.analysis.tasks``, which knows no audits), and with ``--beat`` the embedded beat and its tick; the
    extra ``celery worker`` arguments."""
    from scanner.audits.tasks import enable_beat, register

    register(app, settings)
    if not args.beat:
        return []
    enable_beat(app, args.audit_tick)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]


def main(args: argparse.Namespace, settings: Settings) -> int:
    from scanner.db import migrate
    from scanner.db.session import make_sessionmaker

    try:
        engine = migrate.open_current(settings)
    except migrate.SchemaOutOfDate as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sessions = make_sessionmaker(engine)
    handlers = {"add": _add, "list": _list, "run": _run, "history": _history, "remove": _remove}
    try:
        return handlers[args.audit_command](args, settings, sessions)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def check_start_url(start_url: str, settings: Settings, allow_private: bool = False) -> None:
    """``spec.check_start_url``, saying how to audit one's own local or staging site when it is refused."""
    import asyncio

    from scanner.fetch import FetchError

    try:
        asyncio.run(spec_rules.check_start_url(start_url, settings, allow_private))
    except FetchError as err:
        hint = "" if allow_private else " (your own local or staging site: add --allow-private)"
        raise ValueError(f"audit runs may not crawl {start_url}: {err.message}{hint}") from err


def _add(args: argparse.Namespace, settings: Settings, sessions: Any) -> int:
    from scanner.db import keys
    from scanner.db.models import utcnow
    from scanner.db.session import transaction

    if args.max_pages < 1 or args.max_depth < 0:  # said with the options people typed, not the fields' names
        raise ValueError("--max-pages must be at least 1 and --max-depth at least 0")

    spec = spec_rules.spec_from(
        args.site,
        schedule.interval_text(args.every) if args.every else args.cron,
        max_pages=args.max_pages,
        max_depth=args.max_depth,
        include=args.include,
        exclude=args.exclude,
        webhook_url=args.webhook,
        webhook_secret=args.webhook_secret,
        missed_run_policy=args.missed,
        enabled=not args.disabled,
        name=args.name,
        robustness_sample=args.robustness_sample,
        allow_private=args.allow_private,
    )
    check_start_url(spec.start_url, settings, args.allow_private)
    spec_rules.check_webhook(spec, settings)
    spec = dataclasses.replace(spec, webhook_secret=secretbox.encrypt(settings, spec.webhook_secret))  # at rest
    with transaction(sessions) as session:
        tenant = keys.get_or_create_tenant(session, args.tenant)
        now = utcnow()
        audit = store.create_audit(session, tenant.id, spec, schedule.parse(spec.schedule).next_after(now))
        print(f"audit {audit.id}: {spec.start_url} {spec.schedule}, next run {audit.next_run_at:%Y-%m-%d %H:%M:%S} UTC")
    print(where_runs_happen(settings, audit.id))
    return 0


def where_runs_happen(settings: Settings, audit_id: int) -> str:
    """One line for `audit add`: a schedule nobody ticks is the silent failure people hit first."""
    if settings.embedded:
        return (
            f"runs happen while `scanner serve` runs with this database ({settings.db_url}); "
            f"`scanner audit run {audit_id}` runs it now"
        )
    return f"runs happen in the worker started with `scanner worker --beat` (broker {settings.broker_url})"


def _list(args: argparse.Namespace, settings: Settings, sessions: Any) -> int:
    from sqlalchemy import select

    from scanner.db.models import Audit, Site, Tenant

    table = Table(title="audits")
    columns = (
        "id", "name", "tenant", "site", "start url", "schedule", "missed", "enabled", "private ok", "last run",
        "next run",
    )  # fmt: skip
    for column in columns:
        table.add_column(column)
    query = select(Audit, Site.host, Tenant.name).join(Site, Site.id == Audit.site_id).join(Tenant)
    if args.tenant:
        query = query.where(Tenant.name == args.tenant)
    with sessions() as session:
        for audit, host, tenant in session.execute(query.order_by(Audit.id)):
            table.add_row(
                str(audit.id), audit.name or host, tenant, host, audit.start_url, audit.schedule,
                audit.missed_run_policy, "yes" if audit.enabled else "no", "yes" if audit.allow_private else "no",
                _when(audit.last_run_at),
                _when(audit.next_run_at),
            )  # fmt: skip
    console().print(table)
    return 0


def _run(args: argparse.Namespace, settings: Settings, sessions: Any) -> int:
    from scanner.audits import runner

    try:
        result = runner.run_now(settings, args.audit_id, console(stderr=True))
    except store.AlreadyRunning as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result.status != "done":
        print(f"run {result.run_id} failed ({result.error_code}): {result.error}", file=sys.stderr)
        return 1
    diff = result.diff or {}
    counts = ", ".join(f"{name} {value}" for name, value in result.counts.items())
    changes = ", ".join(
        f"{name.replace('_', ' ')} {len(diff.get(name, []))}" for name in ("newly_flagged", "gone", "changed")
    )
    print(f"run {result.run_id} done: {counts}; {changes}")
    return 0


def _history(args: argparse.Namespace, settings: Settings, sessions: Any) -> int:
    table = Table(title=f"runs of audit {args.audit_id}")
    columns = (
        "run",
        "started",
        "status",
        "pages",
        "images",
        "flagged",
        "newly flagged",
        "gone",
        "changed",
        "flipped by attack",
        "reason",
    )
    for column in columns:
        table.add_column(column)
    with sessions() as session:
        if store.audit_of(session, None, args.audit_id) is None:
            print(f"error: no audit {args.audit_id}", file=sys.stderr)
            return 1
        for run in store.runs_of(session, args.audit_id, args.limit):
            table.add_row(
                str(run.id), _when(run.started_at), run.status, str(run.pages), str(run.images), str(run.flagged),
                str(run.newly_flagged), str(run.gone), str(run.changed), _flips(run.robustness), _reason(run),
            )  # fmt: skip
    console().print(table)
    return 0


def _remove(args: argparse.Namespace, settings: Settings, sessions: Any) -> int:
    from scanner.db.session import transaction

    with transaction(sessions) as session:
        if not store.remove_audit(session, None, args.audit_id):
            print(f"error: no audit {args.audit_id}", file=sys.stderr)
            return 1
    print(f"audit {args.audit_id} removed")
    return 0


def _reason(run: Any) -> str:
    """Why a failed run failed: its code, then what it means for people."""
    if run.status != "failed":
        return "-"
    return f"{run.error_code or 'error'}: {run.error}" if run.error else (run.error_code or "-")


def _flips(robustness: dict[str, Any] | None) -> str:
    if not robustness:
        return "-"
    return f"{robustness['flipped']}/{robustness['sample']} at eps {robustness['eps'] * 255:.0f}/255"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"
