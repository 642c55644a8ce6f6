"""The network policy of a crawl made on a tenant's behalf (an audit): every request under the fetcher's rules.

An audit crawls a URL that a tenant typed, from inside our network, so its browser must not reach what
``scanner.fetch`` refuses (cloud metadata, loopback, private ranges, other ports). Playwright's request routing
cannot enforce that: redirects and the context's own API requests are not routed, and checking a name before
Chromium resolves it again is open to DNS rebinding. So the browser is given a forward proxy on 127.0.0.1
(``GuardProxy``) as its only way out: for every request, redirect hop, WebSocket and HTTPS tunnel the proxy
checks the URL with ``scanner.fetch.check_url``, resolves the name once with the fetcher's ``GuardedResolver``
and connects to the address it checked. The crawl's own aiohttp requests (robots.txt, sitemaps) go through the
fetcher's ``GuardedConnector``, which checks every connection, including the redirects aiohttp follows.

The local ``scanner crawl`` sets no policy: the user's own machine may crawl the user's own loopback sites.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import aiohttp
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from scanner.fetch import FetchError, FetchPolicy, GuardedConnector, GuardedResolver, check_url

log = logging.getLogger(__name__)
MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0
_HOP_HEADERS = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")


class GuardProxy:
    """A forward proxy (plain HTTP and CONNECT) on a loopback port that connects only where ``policy`` allows.

    Refusals are answered ``403`` with the fetcher's error code in ``X-Scanner-Refused``; nothing is connected.
    Each client connection carries one request (``Connection: close`` upstream), so a reused connection can
    never carry a second request to a host that was not checked.
    """

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._resolver = GuardedResolver(policy, ThreadedResolver())
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused: list[str] = []  # "code url" of every refused request, for logs and tests

    @property
    def url(self) -> str:
        assert self._server is not None, "start the proxy first"
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> GuardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD_BYTES)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._one_request(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass  # the browser went away or sent garbage: nothing to answer
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        method, target, version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        tunnel = method.upper() == "CONNECT"
        url = f"https://{target}/" if tunnel else target
        try:
            hop = check_url(url, self.policy)
            address = await self._address(hop)
            upstream_reader, upstream_writer = await asyncio.open_connection(address, hop.port)
        except FetchError as err:
            self.refused.append(f"{err.code} {url}")
            log.info("crawl request refused by the network policy: %s %s", err.code, url)
            await _answer(writer, 403, err.code)
            return
        except OSError:
            await _answer(writer, 502, "connection_failed")
            return
        if tunnel:
            writer.write(f"{version.strip()} 200 Connection Established\r\n\r\n".encode())
        else:
            upstream_writer.write(_origin_form(head, hop))
        await _pipe_both(reader, writer, upstream_reader, upstream_writer)

    async def _address(self, hop: URL) -> str:
        """The one address to connect to: the literal (already checked) or the first allowed resolution."""
        host = hop.raw_host or ""
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            return host
        except OSError:
            pass
        try:
            resolved = await self._resolver.resolve(host, hop.port or 0, socket.AF_UNSPEC)
        except OSError as err:  # BlockedAddressError, DNSLookupError
            code = "blocked_address" if "not allowed" in str(err) else "dns_failure"
            raise FetchError(code, "the host has no address this crawl may connect to", str(hop)) from None
        return str(resolved[0]["host"])


def _origin_form(head: bytes, hop: URL) -> bytes:
    """The request as the origin server expects it: origin-form target, no proxy headers, one request only."""
    lines = head.split(b"\r\n")
    method, _, version = lines[0].split(b" ", 2)
    target = hop.raw_path_qs.encode("latin-1") or b"/"
    kept = [line for line in lines[1:] if line and line.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS]
    return b"\r\n".join([b" ".join([method, target, version]), *kept, b"Connection: close", b"", b""])


async def _answer(writer: asyncio.StreamWriter, status: int, code: str) -> None:
    reason = {403: "Forbidden", 502: "Bad Gateway"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nX-Scanner-Refused: {code}\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    with contextlib.suppress(OSError):
        await writer.drain()


async def _pipe_both(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
    finally:
        with contextlib.suppress(Exception):
            upstream_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(64 * 1024):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def guarded_session(policy: FetchPolicy, user_agent: str) -> aiohttp.ClientSession:
    """An aiohttp session for robots.txt and sitemaps whose every connection obeys ``policy``."""
    return aiohttp.ClientSession(
        connector=GuardedConnector(policy, GuardedResolver(policy, ThreadedResolver())),
        headers={"User-Agent": user_agent},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=10),
    )


def browser_proxy(proxy_url: str) -> dict[str, str]:
    """Playwright's ``proxy`` option: everything through the guard, loopback too (Chromium skips the proxy
    for loopback unless told ``<-loopback>``)."""
    return {"server": proxy_url, "bypass": "<-loopback>"}
