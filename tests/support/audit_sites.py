"""The audit tests' local web: one shop page whose images the test changes between runs, and a webhook
receiver whose answers the test scripts (serve them with ``tests.support.servers.Served``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web


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
