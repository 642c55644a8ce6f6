"""Small capped GETs for robots.txt and sitemaps, with aiohttp rather than the browser.

Why not the browser: these are machine-readable files, not pages; fetching them through Chromium would cost a
tab, run the site's service workers and count against the page budget. Why capped: a hostile or broken server
can answer with gigabytes; robots.txt beyond 500 KiB is ignored by Google, and a sitemap is at most 50 MB by
the protocol. Gzip is undone here with a cap on the inflated size, so a gzip bomb stops at the cap.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

import aiohttp

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class TextResponse:
    url: str  # final URL after redirects
    status: int
    body: bytes
    headers: dict[str, str]


class TooLargeError(Exception):
    """The body exceeded the cap."""


def gunzip_capped(data: bytes, cap: int) -> bytes:
    """Inflate gzip data, refusing more than ``cap`` bytes of output."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(data, cap + 1)
    if len(out) > cap:
        raise TooLargeError(f"inflates to more than {cap} bytes")
    return out


async def get_capped(session: aiohttp.ClientSession, url: str, *, cap: int, timeout_s: float) -> TextResponse:
    """GET ``url`` following up to 5 redirects; raises aiohttp/OS errors, TimeoutError or TooLargeError."""
    async with asyncio.timeout(timeout_s), session.get(url, allow_redirects=True, max_redirects=5) as resp:
        if resp.content_length is not None and resp.content_length > cap:
            raise TooLargeError(f"Content-Length {resp.content_length} exceeds {cap}")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > cap:
                raise TooLargeError(f"body exceeds {cap} bytes")
        data = bytes(body)
        if data.startswith(GZIP_MAGIC):
            data = gunzip_capped(data, cap)
        return TextResponse(str(resp.url), resp.status, data, {k.lower(): v for k, v in resp.headers.items()})


def new_session(user_agent: str) -> aiohttp.ClientSession:
    """A session for robots and sitemaps: our user agent, no cookies, no proxy from the environment."""
    return aiohttp.ClientSession(
        headers={"User-Agent": user_agent},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=10),
    )
