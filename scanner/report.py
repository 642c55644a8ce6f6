"""``scanner report``: flagged images from the local database (embedded) or from a server (``--api``), as a
table, JSON or CSV.  Both read the same report: the server's ``GET /v1/reports/flagged``."""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import sys
from typing import Any

from rich.table import Table

from scanner import terminal
from scanner.csvsafe import safe_row
from scanner.explain import MEANING, label_text
from scanner.settings import Settings

COLUMNS = [
    "sha256", "label", "confidence", "in_domain", "score", "threshold", "false_flag", "site", "page_url", "image_url",
    "seen_at", "analysed_at",
]  # fmt: skip
FALSE_FLAG_FILTER = {"show": None, "hide": False, "only": True}


def fetch_report(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.api:
        return asyncio.run(_from_server(args))
    return _from_database(settings, args)


async def _from_server(args: argparse.Namespace) -> list[dict[str, Any]]:
    from scanner.client import ScannerClient
    from scanner.siteurl import api_url

    base = api_url(args.api)
    if not args.key:
        raise ValueError("--api needs --key")
    params = {
        "site": args.site,
        "since": args.since,
        "until": args.until,
        "label": args.label,
        "min_score": None if args.min_score is None else str(args.min_score),
        "false_flag": _false_flag_param(args),
        "limit": str(min(args.limit, 1000)),
    }
    rows: list[dict[str, Any]] = []
    async with ScannerClient(base, args.key) as client:
        while len(rows) < args.limit:
            page = await client.flagged(**{k: v for k, v in params.items() if v is not None})
            rows += page["items"]
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
    return rows[: args.limit]


def _from_database(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from scanner.db import migrate, queries
    from scanner.db.models import Tenant
    from scanner.db.session import make_sessionmaker
    from scanner.versions import served_versions

    engine = migrate.open_current(settings)  # the one migration rule (README: Migrations)
    versions = served_versions(settings)
    with make_sessionmaker(engine)() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == args.tenant))
        if tenant is None:
            return []
        report = queries.FlaggedFilter(
            tenant_id=tenant.id,
            model_version=versions.model_version,
            calibration_version=versions.calibration_version,
            site=args.site,
            since=_time(args.since),
            until=_time(args.until),
            min_score=args.min_score,
            label=args.label,
            limit=args.limit,
            false_flag=FALSE_FLAG_FILTER[args.false_flags],
        )
        return queries.flagged_report(session, report)


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"not an ISO time: {text!r} (e.g. 2026-11-01 or 2026-11-01T12:00:00Z)") from err
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _false_flag_param(args: argparse.Namespace) -> str | None:
    wanted = FALSE_FLAG_FILTER[args.false_flags]
    return None if wanted is None else str(wanted).lower()


def print_report(rows: list[dict[str, Any]], fmt: str) -> None:
    plain = [{column: _plain(row.get(column)) for column in COLUMNS} for row in rows]
    if fmt == "json":
        print(json.dumps(plain, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(safe_row(row) for row in plain)  # no cell a spreadsheet would run as a formula
    else:
        console = terminal.console()
        console.print(_table(plain))
        if plain:
            console.print(f"[dim]{MEANING}[/]", highlight=False)


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} flagged image(s), newest first")
    for column in ("image", "label", "score", "threshold", "feedback", "page", "seen"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["image_url"] or f"sha256 {row['sha256'][:12]}",
            label_text(row["label"]),
            _number(row["score"]),
            _number(row["threshold"]),
            "confirmed false flag" if row["false_flag"] else "",
            row["page_url"] or row["site"] or "",
            (row["seen_at"] or "")[:19],
        )
    return table


def _number(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value
