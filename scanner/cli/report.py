"""``scanner report``: flagged images from the local database or a server, as a table, JSON or CSV (the work is
``scanner.report``'s)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scanner.helpformat import HelpFormatter
from scanner.report import FALSE_FLAG_FILTER, fetch_report, print_report
from scanner.settings import Settings

REPORT_HELP = (
    "Flagged images from the local database (or --api). Score S > threshold T: the perturbation detectors find "
    "the image unlike ordinary images; label = the robust model's class, or 'no confident class'."
)


def add_parser(sub: Any) -> None:
    report = sub.add_parser(
        "report", help="flagged images, newest first", formatter_class=HelpFormatter, description=REPORT_HELP
    )
    report.add_argument("--site", help="only images seen on this host, e.g. shop.example (with its :port if any)")
    report.add_argument("--since", help="only sightings at or after this ISO time, e.g. 2026-11-01")
    report.add_argument("--until", help="only sightings before this ISO time")
    report.add_argument("--min-score", type=float, help="only verdicts whose combined score is at least this")
    report.add_argument("--label", help="only this label of the robust model, e.g. cat; none: no confident class")
    report.add_argument(
        "--false-flags",
        choices=list(FALSE_FLAG_FILTER),
        default="show",
        help="images someone called a false flag: show them (marked), hide them, or show only them",
    )
    report.add_argument("--limit", type=int, default=100, help="at most this many rows")
    report.add_argument("--tenant", default="default", help="embedded database: whose report")
    report.add_argument("--api", help="read from this scanner server instead of the local database")
    report.add_argument("--key", help="API key for --api (scope reports:read)")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from scanner.siteurl import site_filter

    try:
        if args.site is not None:
            site_filter(args.site)
    except ValueError as err:  # a usage error: exit 2, like argparse's own, before any database or server
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        rows = fetch_report(settings, args)
    except Exception as err:  # noqa: BLE001 - every failure here is the user's to fix: say it plainly
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(rows, args.format)
    return 0
