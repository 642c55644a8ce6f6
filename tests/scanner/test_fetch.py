"""SafeFetcher against real aiohttp servers on 127.0.0.1 (no network mocks; pytest-asyncio is not used)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from scanner import fetch as fetch_module
from scanner.fetch import (
    BlockedAddressError,
    Fetched,
    FetchError,
    FetchPolicy,
    GuardedResolver,
    SafeFetcher,
    check_url,
    is_allowed_address,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LOCAL = FetchPolicy(allow_private=True, allowed_ports=None, timeout_s=5.0)
CHUNK = 64 * 1024
STREAM_TOTAL = 256 * 1024 * 1024  # far more than socket buffers hold, so the server cannot finish alone


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


class Server:
    """A local test server: records every request and how the streaming handler ended."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.stream_written = 0
        self.stream_finished = False
        self.stream_ended = asyncio.Event()
        self.release = asyncio.Event()
        self.base = ""
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/img.png", self.image)
        app.router.add_get("/r/{n}", self.redirect_chain)
        app.router.add_get("/to", self.redirect_to)
        app.router.add_get("/big", self.big_with_length)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/gzip/{size}", self.gzipped)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/html", self.html)
        app.router.add_get("/cookie", self.cookie)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]):
        self.requests.append(request)
        return await handler(request)

    async def image(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def redirect_chain(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(body=PNG, content_type="image/png")
        return web.Response(status=302, headers={"Location": str(n - 1)})  # relative: /r/2 -> /r/1

    async def redirect_to(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["url"]})

    async def big_with_length(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 4096, content_type="image/png")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            while self.stream_written < STREAM_TOTAL:
                await resp.write(b"\0" * CHUNK)
                self.stream_written += CHUNK
            self.stream_finished = True
        finally:
            self.stream_ended.set()
        return resp

    async def gzipped(self, request: web.Request) -> web.Response:
        body = gzip.compress(b"\0" * int(request.match_info["size"]))
        return web.Response(body=body, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"})

    async def slow(self, request: web.Request) -> web.Response:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.release.wait(), 5)
        return web.Response(body=PNG, content_type="image/png")

    async def html(self, request: web.Request) -> web.Response:
        return web.Response(text="<html></html>", content_type="text/html")

    async def cookie(self, request: web.Request) -> web.Response:
        if "Cookie" in request.headers:
            return web.Response(status=400, text="cookie sent")
        return web.Response(body=PNG, content_type="image/png", headers={"Set-Cookie": "session=secret; Path=/"})

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    server = Server()
    runner = web.AppRunner(server.app(), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.port = runner.addresses[0][1]
    server.base = f"http://127.0.0.1:{server.port}"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def fetch_error(fetcher: SafeFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(url)
    return info.value


# --- the address predicate ----------------------------------------------------------------------------------------

ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]
REFUSED = [
    "127.0.0.1",
    "::1",
    "::ffff:127.0.0.1",
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "224.0.0.1",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "64:ff9b::7f00:1",
    "192.168.1.1",
    "172.16.0.1",
    "198.18.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::ffff:10.0.0.1",
    "2002:7f00:1::1",
    "::ffff:0:7f00:1",
    "2001::1",
    "2001:db8::1",
    "not an address",
]


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_allowed_address(address)


@pytest.mark.parametrize("address", REFUSED)
def test_non_global_addresses_are_refused(address: str) -> None:
    assert not is_allowed_address(address)


def test_allow_private_still_refuses_unspecified_broadcast_and_multicast() -> None:
    for address in ("127.0.0.1", "::1", "10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "fe80::1"):
        assert is_allowed_address(address, allow_private=True)
    for address in ("0.0.0.0", "::", "::ffff:0.0.0.0", "255.255.255.255", "224.0.0.1", "ff02::1"):
        assert not is_allowed_address(address, allow_private=True)


# --- URL checks (also what every redirect hop goes through) ---------------------------------------------------------

BAD_URLS = [
    "",
    "http://",
    "ftp://example.com/a.png",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "data:image/png;base64,iVBORw0KGgo=",
    "http://user:pass@example.com/a.png",
    "http://@example.com/a.png",
    "/relative/a.png",
    "http://exa mple.com/",
    "http://example.com:0/",
    "http://example.com:99999/",
    "http://[fe80::1%25eth0]/",
    "http://134744072/",  # 8.8.8.8 in a form that parsers disagree on
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls(url: str) -> None:
    with pytest.raises(FetchError) as info:
        check_url(url, FetchPolicy())
    assert info.value.code == "bad_url"
    assert info.value.url == url


def test_check_url_on_redirect_targets() -> None:
    policy = FetchPolicy()
    assert check_url("https://example.com/a.png", policy) == URL("https://example.com/a.png")
    assert check_url("http://example.com:80/a.png", policy).port == 80
    for url in ("http://127.0.0.1/x", "http://[::ffff:127.0.0.1]/", "http://0x7f.1/", "http://169.254.169.254/"):
        with pytest.raises(FetchError) as info:
            check_url(url, policy)
        assert info.value.code == "blocked_address", url
        assert "127.0.0.1" in info.value.message or "169.254.169.254" in info.value.message
    with pytest.raises(FetchError) as info:
        check_url("http://example.com:8080/", policy)
    assert info.value.code == "blocked_port"
    assert check_url("http://example.com:8080/", FetchPolicy(allowed_ports=None)).port == 8080


def test_fetch_error_to_dict() -> None:
    error = FetchError("http_status", "HTTP status 404", "http://example.com/")
    assert error.to_dict() == {"code": "http_status", "message": "HTTP status 404", "url": "http://example.com/"}


# --- the resolver ---------------------------------------------------------------------------------------------------


class FixedResolver(AbstractResolver):
    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


def test_resolver_drops_blocked_addresses_and_fails_when_none_is_left() -> None:
    async def main() -> None:
        mixed = GuardedResolver(FetchPolicy(), FixedResolver("127.0.0.1", "93.184.215.14", "10.1.2.3"))
        assert [r["host"] for r in await mixed.resolve("rebind.example", 80)] == ["93.184.215.14"]
        with pytest.raises(BlockedAddressError, match="not allowed") as refused:
            await GuardedResolver(FetchPolicy(), FixedResolver("127.0.0.1", "::1")).resolve("rebind.example", 80)
        # What an internal name resolves to is never told back (it would map the intranet for the caller).
        assert "127.0.0.1" not in str(refused.value) and "::1" not in str(refused.value)
        with pytest.raises(BlockedAddressError, match="not allowed") as refused:
            await GuardedResolver(FetchPolicy(), ThreadedResolver()).resolve("localhost", 80)
        assert "127.0.0.1" not in str(refused.value)

    run(main())


# --- blocked before any connection ----------------------------------------------------------------------------------

LITERAL_BLOCKED = [
    "http://[::1]/x.png",
    "http://[::ffff:127.0.0.1]/x.png",
    "http://0.0.0.0/x.png",
    "http://2130706433/x.png",
    "http://0x7f000001/x.png",
    "http://0x7f.1/x.png",
    "http://0177.0.0.1/x.png",
    "http://10.0.0.1/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/x.png",
    "http://224.0.0.1/x.png",
    "http://[fe80::1]/x.png",
    "http://[fc00::1]/x.png",
    "http://[ff02::1]/x.png",
    "http://[64:ff9b::7f00:1]/x.png",
]


def test_default_policy_blocks_loopback_server_and_other_literals_without_connecting() -> None:
    async def main() -> None:
        async with serving() as server, SafeFetcher() as fetcher:
            urls = [f"{server.base}/img.png", *LITERAL_BLOCKED]
            for url in urls:
                started = time.monotonic()
                error = await fetch_error(fetcher, url)
                assert error.code == "blocked_address", (url, error)
                assert error.url == url
                assert time.monotonic() - started < 0.2, url
            assert "127.0.0.1" in (await fetch_error(fetcher, f"{server.base}/img.png")).message
            assert server.requests == []

    run(main())


def test_names_resolving_to_loopback_are_blocked_by_the_resolver() -> None:
    async def main() -> None:
        async with serving() as server:
            async with SafeFetcher() as fetcher:
                error = await fetch_error(fetcher, "http://localhost/x.png")
                assert error.code == "blocked_address"
                assert "127.0.0.1" not in error.message  # what an internal name resolves to is not told
            async with SafeFetcher(FetchPolicy(allowed_ports=None)) as fetcher:
                error = await fetch_error(fetcher, f"http://localhost:{server.port}/img.png")
                assert error.code == "blocked_address"
            assert server.requests == []

    run(main())


def test_connector_rechecks_the_peer_even_if_the_url_check_is_bypassed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_module, "check_url", lambda url, policy: URL(url))  # aiohttp skips the resolver

    async def main() -> None:
        async with serving() as server, SafeFetcher(FetchPolicy(allowed_ports=None)) as fetcher:
            error = await fetch_error(fetcher, f"{server.base}/img.png")
            assert error.code == "blocked_address"
            assert "address connected to is not allowed" in error.message
            await asyncio.sleep(0.05)
            assert server.requests == []

    run(main())


def test_dns_failure() -> None:
    async def main() -> None:
        async with SafeFetcher() as fetcher:
            assert (await fetch_error(fetcher, "http://no-such-host.invalid/a.png")).code == "dns_failure"

    run(main())


# --- against a local server with private addresses allowed ----------------------------------------------------------


def test_fetches_an_image() -> None:
    async def main() -> None:
        async with serving() as server, SafeFetcher(LOCAL) as fetcher:
            got = await fetcher.fetch(f"{server.base}/img.png")
            assert got == Fetched(
                url=f"{server.base}/img.png",
                final_url=f"{server.base}/img.png",
                data=PNG,
                content_type="image/png",
                address="127.0.0.1",
            )
            assert server.requests[0].headers["User-Agent"] == LOCAL.user_agent

    run(main())


def test_no_cookies_are_kept() -> None:
    async def main() -> None:
        async with serving() as server, SafeFetcher(LOCAL) as fetcher:
            for _ in range(2):
                assert (await fetcher.fetch(f"{server.base}/cookie")).data == PNG

    run(main())


def test_redirects_are_followed_up_to_the_limit() -> None:
    async def main() -> None:
        async with serving() as server, SafeFetcher(LOCAL) as fetcher:
            got = await fetcher.fetch(f"{server.base}/r/2")
            assert got.data == PNG
            assert got.url == f"{server.base}/r/2"
            assert got.final_url == f"{server.base}/r/0"
            assert got.address == "127.0.0.1"
            assert (await fetcher.fetch(f"{server.base}/r/3")).final_url == f"{server.base}/r/0"
            server.requests.clear()
            error = await fetch_error(fetcher, f"{server.base}/r/4")
            assert error.code == "too_many_redirects"
            assert server.paths() == ["/r/4", "/r/3", "/r/2", "/r/1"]

    run(main())


def test_every_redirect_hop_is_rechecked() -> None:
    async def main() -> None:
        async with serving() as server:
            other = free_port()
            only_this_port = FetchPolicy(allow_private=True, allowed_ports=frozenset({server.port}))
            async with SafeFetcher(only_this_port) as fetcher:
                error = await fetch_error(fetcher, f"{server.base}/to?url=http://127.0.0.1:{other}/img.png")
                assert error.code == "blocked_port"
                assert str(other) in error.message
            async with SafeFetcher(LOCAL) as fetcher:
                targets = {
                    f"http://0.0.0.0:{server.port}/img.png": "blocked_address",  # refused even with allow_private
                    f"http://[::]:{server.port}/img.png": "blocked_address",
                    "file:///etc/passwd": "bad_url",
                    "http://user:pw@127.0.0.1/": "bad_url",
                }
                for target, code in targets.items():
                    error = await fetch_error(fetcher, f"{server.base}/to?url={target}")
                    assert error.code == code, (target, error)
                    assert error.url == f"{server.base}/to?url={target}"
            assert set(server.paths()) == {"/to"}

    run(main())


def test_too_large_by_content_length() -> None:
    async def main() -> None:
        policy = FetchPolicy(allow_private=True, allowed_ports=None, max_bytes=1000)
        async with serving() as server, SafeFetcher(policy) as fetcher:
            error = await fetch_error(fetcher, f"{server.base}/big")
            assert error.code == "too_large"
            assert "Content-Length 4096" in error.message

    run(main())


def test_too_large_while_streaming_stops_early() -> None:
    async def main() -> None:
        policy = FetchPolicy(allow_private=True, allowed_ports=None, max_bytes=256 * 1024)
        async with serving() as server, SafeFetcher(policy) as fetcher:
            error = await fetch_error(fetcher, f"{server.base}/stream")
            assert error.code == "too_large"
            await asyncio.wait_for(server.stream_ended.wait(), 3)  # the server saw the connection go away
            assert not server.stream_finished
            assert server.stream_written < 64 * 1024 * 1024, server.stream_written

    run(main())


def test_byte_cap_applies_to_decompressed_bytes() -> None:
    async def main() -> None:
        policy = FetchPolicy(allow_private=True, allowed_ports=None, max_bytes=256 * 1024)
        async with serving() as server, SafeFetcher(policy) as fetcher:
            small = await fetcher.fetch(f"{server.base}/gzip/1000")
            assert small.data == b"\0" * 1000
            error = await fetch_error(fetcher, f"{server.base}/gzip/{8 * 1024 * 1024}")  # ~8 KB on the wire
            assert error.code == "too_large"
            assert "Content-Length" not in error.message

    run(main())


def test_timeout_covers_the_whole_fetch() -> None:
    async def main() -> None:
        policy = FetchPolicy(allow_private=True, allowed_ports=None, timeout_s=0.5)
        async with serving() as server, SafeFetcher(policy) as fetcher:
            started = time.monotonic()
            error = await fetch_error(fetcher, f"{server.base}/slow")
            assert error.code == "timeout"
            assert time.monotonic() - started < 1.5

    run(main())


def test_http_status_not_an_image_and_connection_failed() -> None:
    async def main() -> None:
        async with serving() as server, SafeFetcher(LOCAL) as fetcher:
            error = await fetch_error(fetcher, f"{server.base}/missing.png")
            assert (error.code, "404" in error.message) == ("http_status", True)
            assert (await fetch_error(fetcher, f"{server.base}/html")).code == "not_an_image"
            assert (await fetch_error(fetcher, f"http://127.0.0.1:{free_port()}/x.png")).code == "connection_failed"

    run(main())


def test_fetch_many_keeps_order_and_errors_in_place() -> None:
    async def main() -> None:
        async with serving() as server, SafeFetcher(LOCAL) as fetcher:
            urls = [f"{server.base}/img.png", f"{server.base}/missing", "ftp://x/", f"{server.base}/r/1", "http://"]
            results = await fetcher.fetch_many(urls, concurrency=2)
            assert [r.code if isinstance(r, FetchError) else "ok" for r in results] == [
                "ok",
                "http_status",
                "bad_url",
                "ok",
                "bad_url",
            ]
            assert [r.url for r in results] == urls
            assert await fetcher.fetch_many([]) == []

    run(main())


def test_fetch_outside_the_context_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        run(SafeFetcher().fetch("http://example.com/"))
