"""Chromium calls nobody by itself: an audit's crawl (confined to the guard proxy) sends not one DNS query of its
own, while its pages still load through the proxy.  Chromium 156 with the old flags resolved accounts.google.com
and update.googleapis.com about three times a second, outside the proxy.  Seen with strace: every connect and
send of the browser and its child processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from scanner.crawl import CrawlConfig, Crawler, PageResult
from scanner.crawl.browser import find_chromium, launch_args
from scanner.fetch import FetchPolicy
from tests.support.sites import Site, blob, html, png


def traced_chromium(tmp_path: Path) -> tuple[str, Path]:
    """A launcher that runs this machine's Chromium under strace, and the file the trace goes to."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed: `apt-get install strace`")
    chromium = find_chromium(None, os.environ, None)
    trace = tmp_path / "trace.txt"
    launcher = tmp_path / "chromium"
    launcher.write_text(
        f'#!/bin/sh\nexec {strace} -f -qq -e trace=connect,sendto,sendmsg,sendmmsg -o {trace} {chromium} "$@"\n'
    )
    launcher.chmod(0o700)
    return str(launcher), trace


@pytest.mark.browser
def test_a_confined_crawl_resolves_no_name_itself(run: Callable[[Awaitable[Any]], Any], tmp_path: Path) -> None:
    launcher, trace = traced_chromium(tmp_path)
    routes = {
        "/": html('<img src="/a.png" width="64" height="64"><a href="https://www.example.org/">out</a>'),
        "/a.png": blob(png(64, 64, (200, 30, 30), noise=True)),
    }
    with Site(routes) as site:
        config = CrawlConfig(
            start_url=site.url("/"),
            max_pages=1,
            scroll=False,
            use_sitemaps=False,
            page_timeout_s=30,
            browser_path=launcher,
            # loopback allowed so that the test's site is reachable: the proxy still carries every request
            network_policy=FetchPolicy(allow_private=True, allowed_ports=None),
        )

        async def crawl() -> list[PageResult]:
            async with Crawler(config) as crawler:
                return [page async for page in crawler.crawl()]

        pages = run(crawl())
    assert [page.error for page in pages] == [None]
    assert [image.url for image in pages[0].images] == [site.url("/a.png")]
    traced = trace.read_text()
    assert 'inet_addr("127.0.0.1")' in traced  # the trace saw the browser reach the guard proxy
    dns = [line for line in traced.splitlines() if "htons(53)" in line]
    assert dns == [], f"{len(dns)} DNS packets past the proxy, e.g. {dns[:2]}"


def test_every_launch_points_the_phone_home_services_nowhere() -> None:
    flags = set(launch_args(euid=1000))
    assert {"--disable-background-networking", "--disable-component-update", "--no-pings"} <= flags
    assert {"--gaia-url=http://127.0.0.1:9/", "--component-updater=url-source=http://127.0.0.1:9/"} <= flags
    assert not any(flag.startswith("--host-resolver-rules") for flag in flags)  # a local crawl resolves names
    assert "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1" in launch_args(euid=1000, confined=True)
