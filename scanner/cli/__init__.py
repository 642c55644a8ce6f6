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

One module per command group (``demo``, ``crawl``, ``report``, ``serve`` with ``worker``, ``db``, ``keys``; the
audits' in ``scanner.audits.cli``), each with its ``add_parser`` and its handlers.  Building the parser imports
no heavy module: a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from scanner.cli import crawl, db, demo, keys, report, serve
from scanner.cli.demo import DEFAULT_DATA

__all__ = ["DEFAULT_DATA", "main"]


def _parser() -> argparse.ArgumentParser:
    from scanner.audits.cli import add_parser as add_audit_parser

    parser = argparse.ArgumentParser(prog="scanner", description="Find adversarial images; serve robust models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    crawl.add_parser(sub)
    report.add_parser(sub)
    serve.add_parsers(sub)
    db.add_parser(sub)
    keys.add_parser(sub)
    add_audit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return demo.run(args)  # needs no settings: it makes its own, in a temporary folder
    from scanner.settings import Settings

    try:
        settings = Settings()
    except (ValidationError, FileNotFoundError) as err:
        print(f"error: invalid settings: {err}", file=sys.stderr)
        return 2
    if args.command == "audit":
        from scanner.audits.cli import main as audit_main

        return audit_main(args, settings)
    handlers = {
        "serve": serve.serve,
        "worker": serve.worker,
        "db": db.run,
        "keys": keys.run,
        "crawl": crawl.run,
        "report": report.run,
    }
    return handlers[args.command](args, settings)
