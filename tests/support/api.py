"""The API on a real socket (in a thread with its own event loop) and one-request clients of it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from scanner.api import create_app
from scanner.db import keys, migrate
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings


@dataclass
class RunningApi:
    settings: Settings
    base: str
    stop: Callable[[], None]
    keys: dict[str, str] = field(default_factory=dict)

    def new_key(self, name: str = "test", tenant: str = "default", **options: Any) -> str:
        sessions = make_sessionmaker(make_engine(self.settings.db_url))
        with transaction(sessions) as session:
            return keys.create_key(session, name, tenant, **options).token


def start_api(settings: Settings, engine: Any = None) -> RunningApi:
    """The app in a thread with its own event loop, on a free port; ``stop()`` shuts it down cleanly."""
    migrate.upgrade(settings.db_url)
    ready, holder = threading.Event(), {}
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        runner = web.AppRunner(create_app(settings, engine), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["port"] = runner.addresses[0][1]
        holder["runner"] = runner
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as err:  # noqa: BLE001 - reported to the waiting test
            holder["error"] = err
            ready.set()
            return
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(120)
    if "error" in holder:
        raise holder["error"]

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return RunningApi(settings, f"http://127.0.0.1:{holder['port']}", stop)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def http(method: str, url: str, key: str | None = None, **kwargs: Any) -> Reply:
    """One request with a fresh client (tests are synchronous; the server runs in its own thread)."""
    headers = dict(kwargs.pop("headers", {}))
    if key:
        headers["Authorization"] = f"Bearer {key}"

    async def go() -> Reply:
        async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers, **kwargs) as r:
            return Reply(r.status, dict(r.headers), await r.read())

    return asyncio.run(go())


def upload(*images: bytes, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for i, data in enumerate(images):
        form.add_field("image", data, filename=f"image{i}.png", content_type="image/png")
    return form
