"""The embedded service inside a command's own event loop: the API on a loopback port with in-process analysis
and the local SQLite database, and a short-lived key for the command.  ``scanner crawl`` uses it when no
``--api`` is given, so that a crawl on one machine needs no server, and still runs the API's code path."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from scanner.api import create_app
from scanner.db import keys, migrate
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings

KEY_NAME = "embedded crawl"


@dataclass(frozen=True)
class EmbeddedService:
    base_url: str
    key: str
    settings: Settings


@asynccontextmanager
async def embedded_service(settings: Settings, tenant: str = "default") -> AsyncIterator[EmbeddedService]:
    if not settings.embedded:
        raise ValueError("embedded_service needs settings without a broker")
    await asyncio.to_thread(migrate.upgrade, settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    with transaction(sessions) as session:
        keys.delete_short_lived(session, KEY_NAME)
        key = keys.create_key(session, KEY_NAME, tenant, expires_in=dt.timedelta(hours=12))
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield EmbeddedService(f"http://127.0.0.1:{port}", key.token, settings)
    finally:
        await runner.cleanup()
        with transaction(sessions) as session:
            keys.delete_short_lived(session, KEY_NAME, key.id)
