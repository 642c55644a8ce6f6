"""The ``scanner`` command line.

    scanner demo                       crawl a local demo site with attacked images, end to end, offline
    scanner crawl <site>               crawl a site with Chromium and scan every image a visitor sees
    scanner report                     flagged images (table, JSON or CSV)
    scanner serve                      the API (embedded: SQLite + in-process analysis when no broker is set)
    scanner worker                     a Celery analysis worker (needs SCANNER_BROKER_URL)
    scanner db upgrade|downgrade|current
    scanner keys create|list|revoke
    scanner audit add|list|run|history|remove

Settings come from ``SCANNER_*`` environment variables or the TOML file named by ``SCANNER_SETTINGS_FILE``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
from pathlib import Path

from pydantic import ValidationError

from scanner.helpformat import HelpFormatter
from scanner.settings import BUNDLED_ROBUST, BUNDLED_STANDARD, REPO_ROOT

MODELS_DIR = BUNDLED_ROBUST.parent
FALSE_FLAG_CHOICES = ("show", "hide", "only")
REPORT_HELP = (
    "Flagged images from the local database (or --api). Score S > threshold T: the perturbation detectors find "
    "the image unlike ordinary images; label = the robust model's class, or 'no confident class'."
)
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanner", description="Find adversarial images; serve robust models.")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = HelpFormatter
    demo = sub.add_parser(
        "demo", help="crawl a local demo site whose images are partly attacked, end to end", formatter_class=defaults
    )
    demo.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 ImageFolder tarball or tree")
    demo.add_argument("--robust", type=Path, default=BUNDLED_ROBUST, help="the robust model bundle that judges")
    demo.add_argument(
        "--standard", type=Path, default=BUNDLED_STANDARD, help="the standard model bundle the attacks target"
    )
    demo.add_argument("--pages", type=int, default=4, help="gallery pages on the demo site")
    demo.add_argument("--per-page", type=int, default=5, help="images per page")
    demo.add_argument("--eps", default="8/255", help="L-inf size of the PGD attacks, in pixel units")
    demo.add_argument("--photos", type=int, default=6, help="ordinary photos on the site, half of them attacked")
    demo.add_argument("--seed", type=int, default=0, help="which test images are drawn and attacked")
    demo.add_argument("--models-only", action="store_true", help="only compare the two models, without a crawl")

    crawl = sub.add_parser("crawl", help="crawl a site and scan every image a visitor sees", formatter_class=defaults)
    crawl.add_argument(
        "site", help="start URL, e.g. https://shop.example/ (a bare host gets https://, a bare 127.0.0.1:8000 http://)"
    )
    crawl.add_argument("--max-pages", type=int, default=100, help="stop after this many pages")
    crawl.add_argument("--max-depth", type=int, default=5, help="links followed from the start page")
    crawl.add_argument("--include", action="append", default=[], help="regex a URL must match (repeatable)")
    crawl.add_argument("--exclude", action="append", default=[], help="regex that excludes a URL (repeatable)")
    crawl.add_argument("--subdomains", action="store_true", help="also crawl subdomains of the site")
    crawl.add_argument("--concurrency", type=int, default=4, help="pages rendered at once")
    crawl.add_argument("--per-host", type=int, default=2, help="pages in flight per host")
    crawl.add_argument("--delay", type=float, default=0.0, help="seconds between requests to one host")
    crawl.add_argument("--timeout", type=float, default=30.0, help="seconds per page")
    crawl.add_argument("--min-size", type=int, default=50, help="skip images smaller than this (pixels)")
    crawl.add_argument("--ignore-robots", action="store_true", help="do not honour robots.txt (your own site only)")
    crawl.add_argument("--no-sitemaps", action="store_true", help="do not read sitemap.xml for more pages")
    crawl.add_argument("--resume", action="store_true", help="continue an interrupted crawl of this site")
    crawl.add_argument("--browser", help="Chromium executable (default: Playwright's, else Debian's chromium)")
    crawl.add_argument("--api", help="submit to this scanner server instead of the embedded one")
    crawl.add_argument("--key", help="API key for --api")
    crawl.add_argument("--json", type=Path, help="write the full report as JSON")
    crawl.add_argument("--csv", type=Path, help="write one row per image as CSV")
    crawl.add_argument("--fail-on-flagged", action="store_true", help="exit with status 3 if any image is flagged")

    report = sub.add_parser(
        "report", help="flagged images, newest first", formatter_class=defaults, description=REPORT_HELP
    )
    report.add_argument("--site", help="only images seen on this host, e.g. shop.example (with its :port if any)")
    report.add_argument("--since", help="only sightings at or after this ISO time, e.g. 2026-11-01")
    report.add_argument("--until", help="only sightings before this ISO time")
    report.add_argument("--min-score", type=float, help="only verdicts whose combined score is at least this")
    report.add_argument("--label", help="only this label of the robust model, e.g. cat; none: no confident class")
    report.add_argument(
        "--false-flags",
        choices=list(FALSE_FLAG_CHOICES),
        default="show",
        help="images someone called a false flag: show them (marked), hide them, or show only them",
    )
    report.add_argument("--limit", type=int, default=100, help="at most this many rows")
    report.add_argument("--tenant", default="default", help="embedded database: whose report")
    report.add_argument("--api", help="read from this scanner server instead of the local database")
    report.add_argument("--key", help="API key for --api (scope reports:read)")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")

    serve = sub.add_parser("serve", help="run the HTTP API, the dashboard and (embedded) the audit schedule")
    serve.add_argument("--host", help="default: SCANNER_HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: SCANNER_PORT (8080)")
    serve.add_argument(
        "--audit-tick", type=float, default=5.0, help="embedded mode: seconds between checks of the audit schedule"
    )

    worker = sub.add_parser("worker", help="run a Celery analysis worker")
    worker.add_argument("--concurrency", type=int, default=1, help="worker processes (each loads the models)")
    worker.add_argument(
        "--pool", default="prefork", choices=["prefork", "solo", "threads"], help="Celery's execution pool"
    )
    worker.add_argument("--loglevel", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    from scanner.audits.cli import add_parser as add_audit_parser
    from scanner.audits.cli import add_worker_options

    add_worker_options(worker)

    db = sub.add_parser("db", help="database schema (Alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate to the newest schema").add_argument(
        "revision", nargs="?", default="head", help="target revision (default: head, the newest)"
    )
    db_sub.add_parser("downgrade", help="migrate back to a revision").add_argument(
        "revision", help="target revision, e.g. 0004"
    )
    db_sub.add_parser("current", help="print the schema revision")

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (once: only its hash is stored)")
    create.add_argument("--name", required=True, help="what the key is for, e.g. laptop or browser")
    create.add_argument("--tenant", default="default", help="whose images and reports the key reaches")
    create.add_argument("--scope", action="append", help="scans:write, reports:read (default: both)")
    create.add_argument("--expires-in", help="e.g. 90d, 12h (default: never)")
    create.add_argument("--json", action="store_true", help="print JSON instead of text")
    keys_sub.add_parser("list", help="list keys (never their secrets)").add_argument(
        "--tenant", help="only this tenant's keys"
    )
    keys_sub.add_parser("revoke", help="revoke a key by its id").add_argument(
        "key_id", help="the id `scanner keys list` shows"
    )
    add_audit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    from scanner.settings import Settings

    try:
        settings = Settings()
    except (ValidationError, FileNotFoundError) as err:
        print(f"error: invalid settings: {err}", file=sys.stderr)
        return 2
    handlers = {"serve": _serve, "worker": _worker, "db": _db, "keys": _keys, "crawl": _crawl, "report": _report}
    if args.command == "audit":
        from scanner.audits.cli import main as audit_main

        return audit_main(args, settings)
    return handlers[args.command](args, settings)


def _demo(args: argparse.Namespace) -> int:
    from training.bundle import BundleError
    from training.data import DataError

    if not args.data.exists():
        print(f"error: demo images not found at {args.data}; pass --data (see shared/data/README.md)", file=sys.stderr)
        return 2
    try:
        if args.models_only:
            from scanner.demo import run_demo

            run_demo(args.data, args.robust, args.standard, args.pages * args.per_page, args.eps, args.seed)
            return 0
        from scanner.demo import run_crawl_demo

        return run_crawl_demo(args)
    except (BundleError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _crawl(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    from scanner import crawl_command

    try:
        site = crawl_command.site_url(args.site)
        crawl_command.check_outputs(args.json, args.csv)
        config = _crawl_config(args, settings, site)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    outcome = _run_crawl(args, settings, config)
    if isinstance(outcome, int):
        return outcome
    from rich.console import Console

    crawl_command.print_report(outcome, Console())
    try:
        if args.json:
            crawl_command.write_json(outcome, args.json)
        if args.csv:
            crawl_command.write_csv(outcome, args.csv)
    except OSError as err:
        print(f"error: cannot write the report: {err}", file=sys.stderr)
        return 2
    reason = crawl_command.failure(outcome)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    return 3 if args.fail_on_flagged and outcome.flagged else 0


def _crawl_config(args: argparse.Namespace, settings, site: str):  # noqa: ANN001, ANN202
    from scanner import crawl_command
    from scanner.crawl import CrawlConfig

    # The options' own names in messages: people typed --max-pages, not max_pages.
    if args.max_pages < 1 or args.concurrency < 1 or args.per_host < 1:
        raise ValueError("--max-pages, --concurrency and --per-host must be at least 1")
    if args.max_depth < 0 or args.min_size < 0 or args.delay < 0 or args.timeout <= 0:
        raise ValueError("--max-depth, --min-size and --delay must not be negative, --timeout must be positive")
    for pattern in (*args.include, *args.exclude):
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"--include/--exclude {pattern!r} is not a regular expression: {err}") from err
    return CrawlConfig(
        start_url=site,
        max_pages=args.max_pages,
        max_depth=args.max_depth,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        allow_subdomains=args.subdomains,
        concurrency=args.concurrency,
        per_host_concurrency=args.per_host,
        delay_s=args.delay,
        page_timeout_s=args.timeout,
        respect_robots=not args.ignore_robots,
        use_sitemaps=not args.no_sitemaps,
        min_image_size=args.min_size,
        max_image_bytes=settings.max_image_bytes,
        browser_path=args.browser,
        state_path=crawl_command.default_state_path(settings, site),
    )


def _run_crawl(args: argparse.Namespace, settings, config):  # noqa: ANN001, ANN202 - the outcome, or an exit status
    import asyncio

    from rich.console import Console

    from scanner import crawl_command
    from scanner.client import ApiError
    from scanner.crawl import BrowserNotFoundError, StateLockedError

    async def run() -> crawl_command.CrawlOutcome:
        async with crawl_command.submitter_for(settings, args.api, args.key) as submitter:
            outcome = await crawl_command.crawl_and_scan(config, submitter, args.resume, Console(stderr=True))
            outcome.mode = f"server {args.api}" if args.api else "embedded"
            return outcome

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        _quiet_after_interrupt()
        print(f"interrupted; `scanner crawl {args.site} --resume` continues where it stopped", file=sys.stderr)
        return 130
    except (BrowserNotFoundError, StateLockedError, ValueError, ApiError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the server of --api is not there
        print(f"error: {err.strerror or err}", file=sys.stderr)
        return 2


def _quiet_after_interrupt() -> None:
    """After Ctrl-C the browser and its driver die with the terminal's signal; what they leave behind (tasks
    whose exceptions nobody reads any more) is noise, not news, for the person who pressed it."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda _: None


def _report(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    from scanner.report import fetch_report, print_report

    try:
        rows = fetch_report(settings, args)
    except Exception as err:  # noqa: BLE001 - every failure here is the user's to fix: say it plainly
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(rows, args.format)
    return 0


def _serve(args: argparse.Namespace, settings) -> int:  # noqa: ANN001 - Settings
    from aiohttp import web

    from scanner.api import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from scanner import logsafe

    logsafe.install()  # no API key in a log line, whichever logger writes it
    host, port = args.host or settings.host, args.port if args.port is not None else settings.port
    from scanner.settings import masked_url  # never print passwords

    app = create_app(settings)
    if settings.embedded:
        from scanner.audits.local_beat import scheduler_context

        # No broker, so no beat: this process runs the audit schedule (see scanner.audits.local_beat).
        app.cleanup_ctx.append(scheduler_context(settings, args.audit_tick))
        mode = "embedded (in-process analysis, audits scheduled here)"
    else:
        mode = f"distributed (broker {masked_url(settings.broker_url)}; audits run by `scanner worker --beat`)"
    print(f"scanner API on http://{host}:{port} - {mode}, database {masked_url(settings.db_url)}", flush=True)
    print(f"dashboard: http://{host}:{port}/dashboard", flush=True)
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None)
    except OSError as err:  # the usual one: the port is taken by another server
        print(f"error: cannot listen on {host}:{port}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


def _worker(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    if settings.embedded:
        print(
            "error: a worker needs SCANNER_BROKER_URL (e.g. redis://127.0.0.1:6379/0); without a broker, "
            "`scanner serve` analyses images and runs the audit schedule itself",
            file=sys.stderr,
        )
        return 2
    from scanner.analysis.celery_app import QUEUE
    from scanner.analysis.tasks import create_worker_app
    from scanner.db import migrate

    try:
        migrate.current_engine(settings.db_url, upgrade_if_behind=False).dispose()
    except migrate.SchemaOutOfDate as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from scanner.audits.cli import worker_arguments

    app = create_worker_app(settings)
    beat = worker_arguments(args, app, settings)
    app.worker_main(
        [
            "worker",
            f"--concurrency={args.concurrency}",
            f"--pool={args.pool}",
            f"--loglevel={args.loglevel}",
            f"--queues={QUEUE}",
            "--without-gossip",
            "--without-mingle",
            *beat,
        ]
    )
    return 0


def _db(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    from scanner.db import migrate
    from scanner.db.session import make_engine

    if args.db_command == "upgrade":
        make_engine(settings.db_url).dispose()  # creates the SQLite folder when needed
        migrate.upgrade(settings.db_url, args.revision)
    elif args.db_command == "downgrade":
        migrate.downgrade(settings.db_url, args.revision)
    current = migrate.current_revision(make_engine(settings.db_url))
    print(f"schema revision: {current or 'empty'} (newest: {migrate.head_revision()})")
    return 0


_DURATION = re.compile(r"^(\d+)([dhm])$")


def _parse_duration(text: str) -> dt.timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"durations look like 90d, 12h or 30m, not {text!r}")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
    return dt.timedelta(**{unit: int(match.group(1))})


def _keys(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    from sqlalchemy import select

    from scanner.db import keys, migrate
    from scanner.db.models import ApiKey, Tenant
    from scanner.db.session import make_sessionmaker, transaction

    try:
        engine = migrate.current_engine(settings.db_url, upgrade_if_behind=settings.embedded)
    except migrate.SchemaOutOfDate as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        if args.keys_command == "create":
            try:
                expires = _parse_duration(args.expires_in) if args.expires_in else None
                new = keys.create_key(session, args.name, args.tenant, tuple(args.scope or keys.SCOPES), expires)
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            if args.json:
                print(
                    json.dumps(
                        {
                            "id": new.id,
                            "key": new.token,
                            "tenant": new.tenant,
                            "scopes": list(new.scopes),
                            "expires_at": new.expires_at.isoformat() if new.expires_at else None,
                        }
                    )
                )
            else:
                print(new.token)
                print(
                    f"key {new.id} for tenant {new.tenant!r}, scopes {' '.join(new.scopes)}; "
                    "store it now: it is not shown again",
                    file=sys.stderr,
                )
        elif args.keys_command == "list":
            query = select(ApiKey, Tenant.name).join(Tenant).order_by(ApiKey.created_at)
            if args.tenant:
                query = query.where(Tenant.name == args.tenant)
            print(f"{'id':<12}  {'tenant':<16} {'name':<20} {'scopes':<26} {'state':<8} expires")
            for key, tenant in session.execute(query):
                state = "revoked" if key.revoked_at else "active"
                print(
                    f"{key.id}  {tenant:<16} {key.name:<20} {key.scopes:<26} {state:<8} "
                    f"expires {key.expires_at.isoformat() if key.expires_at else 'never'}"
                )
        elif not keys.revoke(session, args.key_id):
            print(f"error: no key {args.key_id}", file=sys.stderr)
            return 1
    return 0
