"""Issue 14, items 3 and 4: ``scanner crawl`` and ``scanner serve`` fail loudly, in one line, with the right
exit status; a bare loopback host:port means http; outputs are checked before the crawl; Ctrl-C is not a
traceback.  The CLI runs as a subprocess against real loopback servers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.commands import SCANNER, environment, scanner
from tests.support.servers import free_port
from tests.support.sites import Site, html, png
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow  # each test runs the scanner command, most of them a crawl

IMAGE = png(64, 64, (200, 30, 30))


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith(("error:", "interrupted"))]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_not_a_url_is_refused_in_one_line(tmp_path: Path) -> None:
    done = scanner(tmp_path, "crawl", "not a url", "--fail-on-flagged", timeout=120)
    assert done.returncode == 2
    assert "not a site: 'not a url'" in _one_line(done.stderr)
    assert "no image was flagged" not in done.stdout


@pytest.mark.browser
def test_a_port_where_nothing_listens_is_connection_refused_and_fails(tmp_path: Path) -> None:
    port = free_port()
    done = scanner(tmp_path, "crawl", f"127.0.0.1:{port}", "--fail-on-flagged", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    line = _one_line(done.stderr)
    assert "reached no page" in line and f"http://127.0.0.1:{port}/" in line and "connection refused" in line
    assert "robots" not in line


@pytest.mark.browser
def test_a_failed_start_page_fails_the_crawl_even_when_other_pages_worked(tmp_path: Path) -> None:
    with Site() as site:
        site.routes["/other.html"] = html("<p>other</p>")
        site.routes["/sitemap.xml"] = _sitemap(site.url("/other.html"))
        done = scanner(tmp_path, "crawl", site.url("/"), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the start page {site.url('/')} failed: HTTP 404" in _one_line(done.stderr)


@pytest.mark.browser
def test_a_bare_loopback_host_and_port_is_crawled_over_http(tmp_path: Path) -> None:
    with Site() as site:
        site.routes["/"] = html('<img src="/a.png" width="64" height="64">')
        site.routes["/a.png"] = _png_handler()
        done = scanner(tmp_path, "crawl", f"127.0.0.1:{site.port}", "--no-sitemaps", timeout=300)
        assert site.count("/") == 1 and site.count("/a.png") >= 1
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"crawl of http://127.0.0.1:{site.port}" in done.stdout.replace("\n", "")


def test_an_unwritable_output_is_refused_before_the_crawl_starts(tmp_path: Path) -> None:
    with Site() as site:
        site.routes["/"] = html("<p>home</p>")
        missing = scanner(tmp_path, "crawl", site.url("/"), "--json", str(tmp_path / "no" / "r.json"), timeout=120)
        folder = scanner(tmp_path, "crawl", site.url("/"), "--csv", str(tmp_path), timeout=120)
        assert site.count("/") == 0 and site.count("/robots.txt") == 0  # nothing was crawled
    assert missing.returncode == 2 and "does not exist" in _one_line(missing.stderr)
    assert folder.returncode == 2 and "it is a folder" in _one_line(folder.stderr)


def test_bad_option_values_are_named_as_typed(tmp_path: Path) -> None:
    done = scanner(tmp_path, "crawl", "http://127.0.0.1:9/", "--max-pages", "0", timeout=120)
    assert done.returncode == 2 and "--max-pages" in _one_line(done.stderr) and "max_pages" not in done.stderr


@pytest.mark.browser
def test_ctrl_c_during_a_crawl_ends_it_in_one_line(tmp_path: Path) -> None:
    with Site() as site:
        site.routes["/"] = html('<a href="/slow/1">1</a>')
        site.routes["/slow/1"] = _slow_page()
        # A terminal's Ctrl-C goes to the whole process group: the CLI, Playwright's driver and Chromium.
        crawl = subprocess.Popen(
            [SCANNER, "crawl", site.url("/"), "--no-sitemaps"],
            env=environment(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            # As in a terminal: an ignored SIGINT is inherited across exec, and the test runner may have been
            # started with it ignored (a background job of a non-interactive shell is), which hid the Ctrl-C.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        wait_for(lambda: site.count("/slow/1") >= 1, 300, 0.2, "the slow page to be requested")
        os.killpg(crawl.pid, signal.SIGINT)
        _, stderr = crawl.communicate(timeout=120)
    assert crawl.returncode == 130
    assert "--resume" in _one_line(stderr)


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = scanner(tmp_path, "serve", "--port", str(port), timeout=300)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in _one_line(done.stderr)


def _sitemap(*urls: str):  # noqa: ANN202 - an aiohttp handler
    body = "".join(f"<url><loc>{url}</loc></url>" for url in urls)
    xml = f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</urlset>'

    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=xml, content_type="application/xml")

    return handler


def _png_handler():  # noqa: ANN202 - an aiohttp handler
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=IMAGE, content_type="image/png")

    return handler


def _slow_page():  # noqa: ANN202 - an aiohttp handler
    async def handler(_: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response(text="<p>late</p>", content_type="text/html")

    return handler
