"""The browser extension's test rig: a page server with clean and attacked demo images (and what the shipped
detector decides about each), the API as the extension's tests run it, Chromium with the unpacked extension
loaded, and the steps and reads the tests repeat (the options form, waiting for verdicts, badges on images)."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import BrowserContext, Page, Worker

from scanner.settings import Settings
from tests.support import api as service
from tests.support.api import Reply, RunningApi
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "extension"
FETCHER_AGENT = "robust-image-scanner"  # the API's fetcher (scanner/fetch.py) says so in its User-Agent


def http(method: str, url: str, key: str | None = None, **kwargs: Any) -> Reply:
    """``tests.support.api.http`` in a thread of its own: the sync Playwright API keeps an event loop
    running in the test's thread, where ``asyncio.run`` is refused."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(service.http, method, url, key, **kwargs).result(120)


# --- the page server --------------------------------------------------------------------------------------------


@dataclass
class PageServer:
    """aiohttp on a loopback port, in a thread: /img/* from the demo images, pages from a dict; every request
    is logged with its User-Agent, so a test can tell the browser's fetches from the scanner API's."""

    img_dir: Path
    pages: dict[str, str] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    base: str = ""
    _stop: Callable[[], None] | None = None

    def fetched_by_api(self, needle: str) -> list[str]:
        return [path for path, agent in list(self.log) if needle in path and FETCHER_AGENT in agent]

    def start(self) -> None:
        ready, holder = threading.Event(), {}
        loop = asyncio.new_event_loop()

        @web.middleware
        async def logger(request: web.Request, handler: Any) -> web.StreamResponse:
            self.log.append((request.path_qs, request.headers.get("User-Agent", "")))
            return await handler(request)

        async def page(request: web.Request) -> web.Response:
            html = self.pages.get(request.match_info["name"])
            if html is None:
                raise web.HTTPNotFound()
            return web.Response(text=html, content_type="text/html")

        async def image(request: web.Request) -> web.StreamResponse:
            path = self.img_dir / request.match_info["name"]
            if not path.is_file():
                raise web.HTTPNotFound()
            return web.Response(body=path.read_bytes(), content_type="image/png")

        async def serve() -> None:
            app = web.Application(middlewares=[logger])
            app.router.add_get("/img/{name}", image)
            app.router.add_get("/{name}", page)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            holder["port"], holder["runner"] = runner.addresses[0][1], runner
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(30), "the page server did not start"
        self.base = f"http://127.0.0.1:{holder['port']}"

        def stop() -> None:
            asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

        self._stop = stop

    def stop(self) -> None:
        if self._stop:
            self._stop()
            self._stop = None


@dataclass
class DemoImage:
    file: str  # "000.png", or "photo-00.jpg" for an ordinary photo of the web-image test split
    sha256: str
    flagged: bool
    label: str | None  # None: no confident class


@dataclass
class Site:
    server: PageServer
    images: list[DemoImage]
    clean_photo_files: tuple[str, ...] = ()

    @property
    def flagged(self) -> list[DemoImage]:
        return [image for image in self.images if image.flagged]

    @property
    def clean(self) -> list[DemoImage]:
        return [image for image in self.images if not image.flagged]

    @property
    def ordinary_photos(self) -> list[DemoImage]:
        """The photos left as served (the demo site attacks every second photo; those are not here)."""
        return [image for image in self.images if image.file in self.clean_photo_files]

    def url(self, path: str) -> str:
        return f"{self.server.base}/{path.lstrip('/')}"


def build_site_images(out: Path, web_set: Path) -> tuple[Path, tuple[str, ...]]:
    """CIFAR-10 images (every second attacked) and four photos of the web-image test split (every second
    attacked through the resize and served as JPEG 90); returns the image folder and the clean photos' names."""
    from scanner.cli import DEFAULT_DATA
    from scanner.demo_site import build_demo_site, demo_photos
    from scanner.settings import BUNDLED_STANDARD

    if not Path(DEFAULT_DATA).exists():
        pytest.fail(
            f"the CIFAR-10 test data is missing: {DEFAULT_DATA} (the shared data set, see ../shared/data/README.md); "
            "the extension tests need it to build clean and attacked images"
        )
    photos = demo_photos(web_set, BUNDLED_STANDARD, 4, "8/255", seed=0)
    images = build_demo_site(out, DEFAULT_DATA, BUNDLED_STANDARD, pages=1, per_page=6, photos=photos)
    clean_photos = tuple(Path(i.file).name for i in images if i.page == "photos.html" and not i.perturbed)
    assert clean_photos, "the web-image test split gave no photo"
    return out / "img", clean_photos


def api_settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        fetch_allow_private=True,  # the page server is on loopback
        fetch_any_port=True,
        rate_limit_per_minute=100_000,
        rate_limit_burst=100_000,
        engine_threads=1,
    )


def wait_scan(api: RunningApi, key: str, scan_id: str) -> dict:
    def finished() -> dict | None:
        document = http("GET", f"{api.base}/v1/scans/{scan_id}", key).json()
        return document if document["status"] == "done" else None

    return wait_for(finished, 60, 0.1, f"scan {scan_id}")


class Api:
    """The main API, stoppable from a test (the last test takes it down)."""

    def __init__(self, running: RunningApi) -> None:
        self.running = running
        self.base = running.base
        self.up = True

    def stop(self) -> None:
        if self.up:
            self.up = False
            self.running.stop()

    def requests(self, method: str, route: str) -> int:
        """Requests the API has answered on a route, whatever their status (its Prometheus counter)."""
        total = 0.0
        labels = (f'method="{method}"', f'route="{route}"')
        for line in http("GET", f"{self.base}/metrics").body.decode().splitlines():
            if line.startswith("scanner_http_requests_total{") and all(label in line for label in labels):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


# --- the browser ----------------------------------------------------------------------------------------------


def chromium_path() -> str:
    explicit = os.environ.get("SCANNER_CHROMIUM")
    for candidate in (explicit, "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no Chromium found: `apt-get install chromium` (Debian's build loads unpacked extensions)")


@dataclass
class Browser:
    context: BrowserContext
    worker: Worker
    extension_id: str
    page_errors: list[str]

    def extension_url(self, page: str) -> str:
        return f"chrome-extension://{self.extension_id}/{page}"

    def tab_id(self, url: str) -> int:
        tabs = self.worker.evaluate("chrome.tabs.query({})")
        found = [tab["id"] for tab in tabs if tab.get("url") == url]
        assert found, f"no tab shows {url}: {[tab.get('url') for tab in tabs]}"
        return found[-1]

    def summary(self, tab_id: int, probe: bool = False) -> dict:
        return self.worker.evaluate("([id, probe]) => robustScanner.summary(id, probe)", [tab_id, probe])

    def uncaught(self) -> list[str]:
        return self.worker.evaluate("robustScanner.uncaught")


def fill_options(page: Page, **values: str) -> None:
    """Type into the options form and save; ids are the inputs' (api-url, api-key, threshold)."""
    for input_id, value in values.items():
        page.fill(f"#{input_id.replace('_', '-')}", value)
    page.evaluate("document.querySelector('#save-result').textContent = ''")
    page.click("#save")
    page.locator("#save-result:not(:empty)").wait_for()  # (extension pages forbid eval: no wait_for_function)


def wait_settled(browser: Browser, tab_id: int, expected: int, timeout: float = 60) -> dict:
    """Until the service worker has a verdict (or an error) for at least ``expected`` images of the tab."""

    def settled() -> dict | None:
        summary = browser.summary(tab_id)
        return summary if summary["pending"] == 0 and summary["scanned"] + summary["errors"] >= expected else None

    return wait_for(settled, timeout, 0.1, f"{expected} verdicts in tab {tab_id}")


def wait_quiet(seconds: float) -> None:
    time.sleep(seconds)


# --- badges on the page ---------------------------------------------------------------------------------------

BADGES_JS = """() => [...document.querySelectorAll('robust-scanner-badge')].map(host => {
  const button = host.shadowRoot.querySelector('.badge');
  const r = button.getBoundingClientRect();
  return {aria: button.getAttribute('aria-label'), kind: button.className, x: r.left + r.width / 2,
          y: r.top + r.height / 2, w: r.width, details: host.shadowRoot.querySelector('.details').textContent};
})"""

IMAGES_JS = """() => [...document.images].map(img => {
  const r = img.getBoundingClientRect();
  return {src: img.getAttribute('src') || '', current: img.currentSrc, html: img.outerHTML,
          left: r.left, top: r.top, right: r.right, bottom: r.bottom};
})"""


def badges_by_image(page: Page) -> dict[str, dict] | None:
    """Each badge assigned to the image whose top-right quarter holds its centre, keyed by the image's src;
    None while some badge is elsewhere (a repositioning frame may still be due)."""
    images, badges = page.evaluate(IMAGES_JS), page.evaluate(BADGES_JS)
    placed: dict[str, dict] = {}
    for badge in badges:
        owners = [
            img
            for img in images
            if (img["left"] + img["right"]) / 2 <= badge["x"] <= img["right"]
            and img["top"] <= badge["y"] <= (img["top"] + img["bottom"]) / 2
        ]
        if len(owners) != 1:
            return None
        placed[owners[0]["src"]] = badge
    return placed
