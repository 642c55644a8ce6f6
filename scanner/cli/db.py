"""``scanner db upgrade|downgrade|current``: the database schema (Alembic migrations)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scanner.settings import Settings


def add_parser(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema (Alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate to the newest schema").add_argument(
        "revision", nargs="?", default="head", help="target revision (default: head, the newest)"
    )
    db_sub.add_parser("downgrade", help="migrate back to a revision").add_argument(
        "revision", help="target revision, e.g. 0004"
    )
    db_sub.add_parser("current", help="print the schema revision")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from alembic.util.exc import CommandError

    from scanner.db import migrate
    from scanner.db.session import make_engine

    try:
        if args.db_command == "upgrade":
            make_engine(settings.db_url).dispose()  # creates the SQLite folder when needed
            migrate.upgrade(settings.db_url, args.revision)
        elif args.db_command == "downgrade":
            migrate.downgrade(settings.db_url, args.revision)
    except CommandError as err:  # an unknown revision, or one on the wrong side of the current one
        known = ", ".join(sorted(migrate.known_revisions()))
        print(f"error: {err} (revisions: {known}; also head, and base for downgrade)", file=sys.stderr)
        return 2
    current = migrate.current_revision(make_engine(settings.db_url))
    print(f"schema revision: {current or 'empty'} (newest: {migrate.head_revision()})")
    return 0
