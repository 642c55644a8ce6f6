"""Fixture web sites for the crawler tests: real aiohttp servers on 127.0.0.1, each in its own thread and loop.

A ``Site`` is a table of paths to handlers; the server records every request it receives (path with query,
start and end times) and how many requests of a tracked kind were in flight at once, so the tests can assert
what the crawler did from the server's side (never requested, requested N times, never more than 2 at once).
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from PIL import Image

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def png(width: int, height: int, color: tuple[int, int, int], noise: bool = False) -> bytes:
    """A real PNG; ``noise`` makes it incompressible (for the byte cap)."""
    if noise:
        import os

        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), color)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def html(body: str, head: str = "") -> Handler:
    page = f"<!doctype html><html><head><meta charset='utf-8'>{head}</head><body>{body}</body></html>"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=page, content_type="text/html")

    return handler


def blob(data: bytes, content_type: str = "image/png") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data, content_type=content_type)

    return handler


def status(code: int, body: str = "") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=body or f"status {code}", content_type="text/html")

    return handler


def redirect(location: str, code: int = 301) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": location})

    return handler


@dataclass
class Hit:
    path: str  # path with query string
    start: float
    end: float | None


class Site:
    """A threaded aiohttp server serving ``routes`` (exact path, or path with query, first)."""

    def __init__(self, routes: dict[str, Handler] | None = None, *, track_prefix: str = "/slow/") -> None:
        self.routes: dict[str, Handler] = dict(routes or {})
        self.hits: list[Hit] = []
        self.track_prefix = track_prefix
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> Site:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    # -- serving ---------------------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        hit = Hit(request.path_qs, time.monotonic(), None)
        tracked = request.path.startswith(self.track_prefix)
        with self._lock:
            self.hits.append(hit)  # counted when it arrives, so requests that never finish count too
            if tracked:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            handler = self.routes.get(request.path_qs) or self.routes.get(request.path)
            if handler is None:
                return web.Response(status=404, text="not found")
            return await handler(request)
        finally:
            with self._lock:
                hit.end = time.monotonic()
                if tracked:
                    self.in_flight -= 1

    # -- what the server saw ---------------------------------------------------------------------------------

    def count(self, path: str) -> int:
        """Requests for ``path`` (with its query, if given; any query if ``path`` has none)."""
        with self._lock:
            return sum(1 for h in self.hits if h.path == path or ("?" not in path and h.path.split("?")[0] == path))

    def paths(self) -> Counter[str]:
        with self._lock:
            return Counter(h.path for h in self.hits)

    def starts(self, prefix: str) -> list[float]:
        with self._lock:
            return sorted(h.start for h in self.hits if h.path.startswith(prefix))
