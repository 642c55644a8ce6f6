"""``scanner serve`` (the API, the dashboard and, embedded, the audit schedule) and ``scanner worker`` (a Celery
analysis worker, with ``--beat`` the audit scheduler too)."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from typing import Any

from scanner.settings import Settings, masked_url  # masked: never print passwords


def add_parsers(sub: Any) -> None:
    from scanner.audits.cli import add_worker_options

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
    add_worker_options(worker)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    host, port = args.host or settings.host, args.port if args.port is not None else settings.port
    if (problem := cannot_listen(host, port)) is not None:  # before the app, the engine and the database load
        print(f"error: cannot listen on {host}:{port}: {problem}", file=sys.stderr)
        return 2
    from aiohttp import web

    from scanner.api import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from scanner import logsafe

    logsafe.install()  # no API key in a log line, whichever logger writes it
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
    except ValueError as err:  # migrate.SchemaOutOfDate: the database is behind or ahead of this code
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (bound the way aiohttp binds it, then released), or None."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return f"{err.strerror} (give --host an address of this machine, e.g. 127.0.0.1)"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: TIME_WAIT is no reason
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    return f"port {port} is in use (stop the server using it, or give another with --port)"
                return f"{err.strerror or err}"
    return None


def worker(args: argparse.Namespace, settings: Settings) -> int:
    if settings.embedded:
        print(
            "error: a worker needs SCANNER_BROKER_URL (e.g. redis://127.0.0.1:6379/0); without a broker, "
            "`scanner serve` analyses images and runs the audit schedule itself",
            file=sys.stderr,
        )
        return 2
    from scanner.analysis.celery_app import QUEUE
    from scanner.analysis.tasks import create_worker_app
    from scanner.audits.cli import worker_arguments
    from scanner.db import migrate

    try:
        migrate.open_current(settings).dispose()
    except migrate.SchemaOutOfDate as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
