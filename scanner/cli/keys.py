"""``scanner keys create|list|revoke``: API keys, on the configured database (created when embedded)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from typing import TYPE_CHECKING, Any

from scanner.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_DURATION = re.compile(r"^(\d+)([dhm])$")


def add_parser(sub: Any) -> None:
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    from scanner.db import migrate
    from scanner.db.session import make_sessionmaker, transaction

    try:
        engine = migrate.open_current(settings)
    except migrate.SchemaOutOfDate as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    handlers = {"create": _create, "list": _list, "revoke": _revoke}
    with transaction(make_sessionmaker(engine)) as session:
        return handlers[args.keys_command](args, session)


def _parse_duration(text: str) -> dt.timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"durations look like 90d, 12h or 30m, not {text!r}")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
    return dt.timedelta(**{unit: int(match.group(1))})


def _create(args: argparse.Namespace, session: Session) -> int:
    from scanner.db import keys

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
    return 0


def _list(args: argparse.Namespace, session: Session) -> int:
    from sqlalchemy import select

    from scanner.db.models import ApiKey, Tenant

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
    return 0


def _revoke(args: argparse.Namespace, session: Session) -> int:
    from scanner.db import keys

    if not keys.revoke(session, args.key_id):
        print(f"error: no key {args.key_id}", file=sys.stderr)
        return 1
    return 0
