"""Sitemaps: page URLs a site lists, including pages that no link reaches.

Where from: the ``Sitemap:`` lines of robots.txt and ``/sitemap.xml``; sitemap index files are followed (a few
levels, a bounded number of files). Parsed with ``defusedxml``, because a sitemap is untrusted XML and the
standard parsers expand entities (billion laughs) or fetch external ones. Gzipped sitemaps are inflated with a
cap. A missing or broken sitemap is not an error: the crawl goes on from its start URL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import aiohttp
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from scanner.crawl.textfetch import TooLargeError, get_capped

log = logging.getLogger(__name__)

SITEMAP_MAX_BYTES = 50 * 1024 * 1024
SITEMAP_TIMEOUT_S = 30.0
MAX_SITEMAP_FILES = 50
MAX_INDEX_DEPTH = 3


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def parse_sitemap(data: bytes) -> tuple[list[str], list[str]]:
    """(page URLs, child sitemap URLs) of one sitemap or sitemap index; ([], []) if it is not one."""
    try:
        root = ElementTree.fromstring(data)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        log.info("unreadable sitemap: %s", exc)
        return [], []
    kind = _local(root.tag)
    if kind not in ("urlset", "sitemapindex"):
        return [], []
    locs = [
        (loc.text or "").strip()
        for entry in root
        for loc in entry
        if _local(loc.tag) == "loc" and (loc.text or "").strip()
    ]
    return (locs, []) if kind == "urlset" else ([], locs)


async def read_sitemaps(session: aiohttp.ClientSession, roots: Iterable[str], *, max_urls: int) -> list[str]:
    """Page URLs from the sitemaps at ``roots`` and the indexes they lead to, at most ``max_urls``."""
    pages: list[str] = []
    seen: set[str] = set()
    level = list(dict.fromkeys(roots))
    for _ in range(MAX_INDEX_DEPTH + 1):
        children: list[str] = []
        for url in level:
            if url in seen or len(seen) >= MAX_SITEMAP_FILES or len(pages) >= max_urls:
                continue
            seen.add(url)
            found, nested = parse_sitemap(await _fetch(session, url))
            pages.extend(found)
            children.extend(nested)
        level = children
    return list(dict.fromkeys(pages))[:max_urls]


async def _fetch(session: aiohttp.ClientSession, url: str) -> bytes:
    try:
        resp = await get_capped(session, url, cap=SITEMAP_MAX_BYTES, timeout_s=SITEMAP_TIMEOUT_S)
    except (aiohttp.ClientError, OSError, TimeoutError, TooLargeError) as exc:
        log.info("sitemap %s not read: %s", url, exc)
        return b""
    return resp.body if resp.status == 200 else b""
