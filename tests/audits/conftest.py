"""Fixtures of the audit tests: a local site whose images the test changes between runs, an audit on it, and a
webhook receiver whose answers the test scripts.  Real servers on 127.0.0.1, no mocks."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from scanner.audits import store
from scanner.db import keys, migrate
from scanner.db.models import utcnow
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from tests.service.conftest import redis_server  # noqa: F401 - the Redis fixture, for the beat test


def png(seed: int, size: int = 64) -> bytes:
    """A distinct noisy picture per seed, big enough for the crawler (it skips icons under 50 px)."""
    import random

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size * size)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class Served:
    """An aiohttp app on a loopback port, in a thread with its own loop."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        ready, holder = threading.Event(), {}

        async def serve() -> None:
            holder["runner"] = runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            holder["port"] = runner.addresses[0][1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(30)
        self.runner, self.url = holder["runner"], f"http://127.0.0.1:{holder['port']}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class Site:
    """One page showing ``images`` (path -> bytes); the test edits the dict between runs."""

    images: dict[str, bytes] = field(default_factory=dict)
    url: str = ""

    def app(self) -> web.Application:
        async def index(_: web.Request) -> web.Response:
            tags = "".join(f'<img src="/img/{name}" width="64" height="64">' for name in self.images)
            return web.Response(text=f"<html><body><h1>shop</h1>{tags}</body></html>", content_type="text/html")

        async def image(request: web.Request) -> web.Response:
            data = self.images.get(request.match_info["name"])
            if data is None:
                raise web.HTTPNotFound()
            return web.Response(body=data, content_type="image/png")

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/img/{name}", image)
        return app


@pytest.fixture
def site() -> Iterator[Site]:
    shop = Site({"a.png": png(1), "b.png": png(2), "c.png": png(3)})
    server = Served(shop.app())
    shop.url = server.url + "/"
    yield shop
    server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    config = Settings(data_dir=tmp_path / "data", engine_threads=1, fetch_allow_private=True, fetch_any_port=True)
    migrate.upgrade(config.db_url)
    return config


@pytest.fixture
def sessions(settings: Settings) -> Iterator[Any]:
    engine = make_engine(settings.db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def make_audit(sessions: Any) -> Callable[..., int]:
    def make(start_url: str, tenant: str = "default", **options: Any) -> int:
        with transaction(sessions) as session:
            tenant_id = keys.get_or_create_tenant(session, tenant).id
            spec = store.AuditSpec(start_url=start_url, schedule=options.pop("schedule", "every 6h"), **options)
            return store.create_audit(session, tenant_id, spec, utcnow()).id

    return make


@dataclass
class Receiver:
    """A webhook receiver: answers with ``statuses`` in turn (then 200) and keeps every request."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            self.requests.append((dict(request.headers), await request.read()))
            return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    server = Served(hook.app())
    hook.url = server.url + "/hook"
    yield hook
    server.stop()
