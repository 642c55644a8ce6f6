"""Cost of the browser: the Playwright crawl engine against a plain HTTP fetcher without JavaScript, on one site.

What it measures
    A generated local site: ``--pages`` HTML pages (default 500) reachable from the index ``/`` (page 0) in a few
    hops: page i links to its children 4i+1..4i+4 in a 4-ary tree, to its parent, and to random pages until it
    has 5 links (a mesh, so most pages are linked from several others).  Each page shows 4 images as plain
    ``<img src>`` tags (so the plain fetcher finds them as well): 2 of its own and 2 from a shared pool of
    ``pages // 10`` (at least 10), so the crawl's per-URL/content de-duplication matters.  Every image is a
    distinct 64x64 PNG of seeded random pixels (about 12 KB); every distinct URL has distinct bytes.
    ``robots.txt`` allows everything.  The site is served by ``aiohttp.web`` on 127.0.0.1 (free port, no access
    log) in a separate process, so the server never shares the event loop of the crawler being timed.

    For each ``--concurrency`` level c, side by side in one run:

    * ``browser``: ``scanner.crawl.Crawler`` with ``CrawlConfig(max_pages=pages, max_depth=50, concurrency=c,
      per_host_concurrency=c, delay_s=0, use_sitemaps=False, scroll=True, state_path=<fresh file>)``; every
      other setting is the crawler's default (robots.txt respected, min_image_size 50, context recycled every
      50 pages).  ``scroll=True`` is the crawler's default and what a user gets (``--no-scroll`` turns it off).
      One Chromium, launched once (its start-up time is reported apart), is shared by all runs; each run gets
      new browser contexts, so no HTTP cache carries over.  Timed: the ``crawl()`` loop, robots.txt included.
    * ``plain``: ``aiohttp.ClientSession(TCPConnector(limit=c))``, a breadth-first crawl by c workers: robots.txt
      once, then each page's HTML, its ``<a href>`` and ``<img src>`` parsed with ``html.parser.HTMLParser``,
      each image's bytes fetched once per crawl (de-duplicated by URL), the same page cap and depth limit.  It is
      run ``--plain-repeats`` times (default 3; it is quick) and the median run is reported.

    Pages/s = pages delivered without error / seconds; images/s = image sightings / seconds, where a sighting is
    one image on one page (``sum(len(page.images))`` for the browser; the same count for the plain fetcher), so
    both rates count the same thing.  The ratio browser/plain of pages/s is the price of rendering; the speedup
    is each level's browser pages/s over the lowest level's.  Sanity: both crawlers should find every page and
    every distinct image URL of the site; any difference is printed.  A short untimed warm-up crawl of each kind
    (``--warmup-pages``, default 10) comes first.

    The machine is shared and noisy: read the ratios, measured side by side in one run, not the absolute rates.

Usage
    python benchmarks/crawl.py [--pages 500] [--concurrency 1,4,8] [--plain-repeats 3] [--warmup-pages 10]
        [--no-scroll] [--seed 0] [--out results/benchmark_crawl.json] [--quick] [--json-only] [--keep-site]

``--quick`` is a smoke test (100 pages, concurrency 1,4).  Needs a Chromium (``/usr/bin/chromium`` from
``apt-get install chromium``, or ``playwright install chromium``; ``SCANNER_CHROMIUM`` picks another).  The rich
table goes to stdout, then one final JSON line (only that line with ``--json-only``); ``--out`` writes the same
JSON to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import aiohttp
import numpy as np
from aiohttp import web
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/crawl.py` from anywhere

from scanner.crawl import BrowserNotFoundError, CrawlConfig, Crawler, launch_browser  # noqa: E402
from scanner.crawl.browser import LaunchedBrowser  # noqa: E402

FULL = {"pages": 500, "concurrency": "1,4,8"}
QUICK = {"pages": 100, "concurrency": "1,4"}
MAX_DEPTH = 50
IMAGE_SIDE = 64
OWN_IMAGES = 2  # per page, seen on that page only
SHARED_IMAGES = 2  # per page, drawn from the shared pool
LINKS_PER_PAGE = 5
TREE_BRANCHING = 4
SERVER_START_TIMEOUT_S = 30.0
PLAIN_TIMEOUT_S = 30.0


# --- arguments --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--pages", type=int, help=f"pages of the site = page cap of both crawls (default {FULL['pages']})"
    )
    parser.add_argument("--concurrency", help=f"comma-separated levels (default {FULL['concurrency']})")
    parser.add_argument("--plain-repeats", type=int, default=3, help="plain crawls per level (the median is reported)")
    parser.add_argument("--warmup-pages", type=int, default=10, help="pages of the untimed warm-up crawls (0: none)")
    parser.add_argument("--no-scroll", action="store_true", help="CrawlConfig(scroll=False) instead of the default")
    parser.add_argument("--seed", type=int, default=0, help="seed of the site's links and images")
    parser.add_argument("--out", type=Path, help="write the JSON result here (e.g. results/benchmark_crawl.json)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 100 pages, concurrency 1,4")
    parser.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    parser.add_argument("--keep-site", action="store_true", help="keep the temporary site folder (path is printed)")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.levels = [int(level) for level in args.concurrency.split(",")]
    except ValueError:
        parser.error("--concurrency takes integers separated by commas, e.g. 1,4,8")
    if min(args.levels) < 1 or args.pages < 1 or args.plain_repeats < 1 or args.warmup_pages < 0:
        parser.error("concurrency levels, --pages and --plain-repeats must be >= 1, --warmup-pages >= 0")
    return args


# --- the site ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """The generated site on disk and what a complete crawl of it must find."""

    root: Path
    pages: int
    distinct_images: int
    sightings: int  # images summed over pages


def page_path(index: int) -> str:
    return "/" if index == 0 else f"/pages/{index}.html"


def page_links(index: int, pages: int, rng: random.Random) -> list[int]:
    """Tree children, the parent, then random pages: LINKS_PER_PAGE distinct others (fewer on tiny sites)."""
    links = [c for c in range(TREE_BRANCHING * index + 1, TREE_BRANCHING * index + TREE_BRANCHING + 1) if c < pages]
    if index > 0:
        links.append((index - 1) // TREE_BRANCHING)
    wanted = min(LINKS_PER_PAGE, pages - 1)
    while len(links) < wanted:
        other = rng.randrange(pages)
        if other != index and other not in links:
            links.append(other)
    return links


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def write_images(folder: Path, names: list[str], seed: int) -> None:
    """One distinct random-pixel PNG per name (distinct bytes: checked)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    contents = set()
    for name in names:
        data = png_bytes(rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8))
        contents.add(data)
        (folder / name).write_bytes(data)
    if len(contents) != len(names):
        raise RuntimeError(f"seed {seed} gave two identical images; pass another --seed")


def page_html(index: int, links: list[int], images: list[str]) -> str:
    tags = "\n".join(f'<img src="/img/{name}" width="{IMAGE_SIDE}" height="{IMAGE_SIDE}" alt="">' for name in images)
    items = "\n".join(f'<li><a href="{page_path(link)}">page {link}</a></li>' for link in links)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>Page {index}</title></head>\n<body>\n'
        f"<h1>Page {index}</h1>\n<p>A generated page of the crawl benchmark.</p>\n{tags}\n<ul>\n{items}\n</ul>\n"
        "</body></html>\n"
    )


def generate_site(root: Path, pages: int, seed: int) -> Site:
    """Write pages/N.html (page 0 is served at /), img/*.png and robots.txt under ``root``."""
    rng = random.Random(seed)
    pool = [f"shared-{i}.png" for i in range(max(10, pages // 10))]
    own = {i: [f"page-{i}-{k}.png" for k in range(OWN_IMAGES)] for i in range(pages)}
    (root / "pages").mkdir(parents=True)
    used: set[str] = set()
    sightings = 0
    for index in range(pages):
        images = own[index] + rng.sample(pool, SHARED_IMAGES)
        used.update(images)
        sightings += len(images)
        (root / "pages" / f"{index}.html").write_text(page_html(index, page_links(index, pages, rng), images))
    write_images(root / "img", sorted(used), seed)
    (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")
    return Site(root, pages, len(used), sightings)


# --- the server, in its own process -----------------------------------------------------------------------------


def _file_handler(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    return handler


async def _serve(root: Path, reply: Connection) -> None:
    app = web.Application()
    app.router.add_get("/", _file_handler(root / "pages" / "0.html"))
    app.router.add_get("/robots.txt", _file_handler(root / "robots.txt"))
    app.router.add_static("/pages", root / "pages")
    app.router.add_static("/img", root / "img")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    reply.send(sock.getsockname()[1])
    await asyncio.Event().wait()  # until the parent terminates this process


def serve_forever(root: str, reply: Connection) -> None:
    """The server process's entry point: serve ``root`` and send the port back."""
    asyncio.run(_serve(Path(root), reply))


def start_server(root: Path) -> tuple[multiprocessing.process.BaseProcess, int]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=serve_forever, args=(str(root), send), daemon=True)
    process.start()
    if not receive.poll(SERVER_START_TIMEOUT_S):
        process.terminate()
        raise RuntimeError("the site server did not start")
    return process, int(receive.recv())


def stop_server(process: multiprocessing.process.BaseProcess) -> None:
    process.terminate()
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()


# --- one crawl's outcome ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one timed crawl delivered."""

    seconds: float
    pages_ok: int = 0
    pages_failed: int = 0
    sightings: int = 0
    distinct_image_urls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    mean_page_s: float | None = None  # the browser's mean PageResult.elapsed_s (one tab's time on a page)

    @property
    def pages_per_s(self) -> float:
        return self.pages_ok / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.sightings / self.seconds


# --- the browser crawl ------------------------------------------------------------------------------------------


def browser_config(start_url: str, pages: int, concurrency: int, state_path: Path, scroll: bool) -> CrawlConfig:
    return CrawlConfig(
        start_url=start_url,
        max_pages=pages,
        max_depth=MAX_DEPTH,
        concurrency=concurrency,
        per_host_concurrency=concurrency,
        delay_s=0.0,
        use_sitemaps=False,
        scroll=scroll,
        state_path=state_path,
    )


async def browser_crawl(launched: LaunchedBrowser, config: CrawlConfig) -> Run:
    errors: Counter[str] = Counter()
    image_urls: set[str] = set()
    run = Run(seconds=0.0)
    page_seconds: list[float] = []
    async with Crawler(config, browser=launched.browser) as crawler:
        start = time.perf_counter()
        async for page in crawler.crawl():
            if page.error is not None:
                run.pages_failed += 1
                errors[page.error] += 1
                continue
            run.pages_ok += 1
            run.sightings += len(page.images)
            page_seconds.append(page.elapsed_s)
            image_urls.update(image.url for image in page.images)
        run.seconds = time.perf_counter() - start
    run.distinct_image_urls, run.errors = len(image_urls), dict(errors)
    run.mean_page_s = round(sum(page_seconds) / len(page_seconds), 4) if page_seconds else None
    return run


# --- the plain fetcher ------------------------------------------------------------------------------------------


class _LinkParser(HTMLParser):
    """``<a href>`` and ``<img src>`` of one HTML document, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        elif tag == "img" and values.get("src"):
            self.images.append(values["src"] or "")


class PlainCrawl:
    """Breadth-first crawl with ``concurrency`` workers: pages capped and depth-limited, images fetched once."""

    def __init__(self, session: aiohttp.ClientSession, start_url: str, max_pages: int) -> None:
        self.session = session
        self.start_url = start_url
        self.origin = urlsplit(start_url)[:2]
        self.max_pages = max_pages
        self.queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.seen_pages = {start_url}
        self.images: dict[str, asyncio.Task[bool]] = {}
        self.run = Run(seconds=0.0)
        self.errors: Counter[str] = Counter()

    async def crawl(self, concurrency: int) -> Run:
        start = time.perf_counter()
        await self._get(urljoin(self.start_url, "/robots.txt"))
        self.queue.put_nowait((self.start_url, 0))
        workers = [asyncio.create_task(self._worker()) for _ in range(concurrency)]
        try:
            await self.queue.join()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        self.run.seconds = time.perf_counter() - start
        self.run.distinct_image_urls = sum(1 for task in self.images.values() if task.result())
        self.run.errors = dict(self.errors)
        return self.run

    async def _worker(self) -> None:
        while True:
            url, depth = await self.queue.get()
            try:
                await self._page(url, depth)
            finally:
                self.queue.task_done()

    async def _get(self, url: str) -> bytes | None:
        try:
            async with asyncio.timeout(PLAIN_TIMEOUT_S), self.session.get(url) as response:
                body = await response.read()
                if response.status == 200:
                    return body
                self.errors[f"http_{response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as err:
            self.errors[type(err).__name__] += 1
        return None

    async def _page(self, url: str, depth: int) -> None:
        body = await self._get(url)
        if body is None:
            self.run.pages_failed += 1
            return
        parser = _LinkParser()
        parser.feed(body.decode("utf-8", "replace"))
        self._enqueue(url, parser.links, depth + 1)
        images = list(dict.fromkeys(urldefrag(urljoin(url, src))[0] for src in parser.images))
        fetched = await asyncio.gather(*(self._image(image) for image in images))
        self.run.pages_ok += 1
        self.run.sightings += sum(fetched)

    def _enqueue(self, base: str, hrefs: list[str], depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        for href in hrefs:
            link = urldefrag(urljoin(base, href))[0]
            if urlsplit(link)[:2] != self.origin or link in self.seen_pages or len(self.seen_pages) >= self.max_pages:
                continue
            self.seen_pages.add(link)
            self.queue.put_nowait((link, depth))

    async def _image(self, url: str) -> bool:
        """Whether the image's bytes were fetched (now or by an earlier page)."""
        if url not in self.images:
            self.images[url] = asyncio.ensure_future(self._fetch_image(url))
        return await asyncio.shield(self.images[url])

    async def _fetch_image(self, url: str) -> bool:
        return bool(await self._get(url))


async def plain_crawl(start_url: str, pages: int, concurrency: int) -> Run:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        return await PlainCrawl(session, start_url, pages).crawl(concurrency)


# --- the measurement --------------------------------------------------------------------------------------------


@dataclass
class Level:
    """One concurrency level, both crawlers."""

    concurrency: int
    browser: Run
    plain: Run
    plain_seconds_all: list[float]

    @property
    def ratio(self) -> float:
        return self.browser.pages_per_s / self.plain.pages_per_s if self.plain.pages_per_s else float("nan")


class Bench:
    """The measured runs, sharing one Chromium and one served site."""

    def __init__(self, args: argparse.Namespace, site: Site, start_url: str, console: Console) -> None:
        self.args = args
        self.site = site
        self.start_url = start_url
        self.console = console
        self.runs = 0

    def _config(self, pages: int, concurrency: int) -> CrawlConfig:
        self.runs += 1
        state = self.site.root.parent / f"state-{self.runs}.sqlite"
        return browser_config(self.start_url, pages, concurrency, state, not self.args.no_scroll)

    async def warm_up(self, launched: LaunchedBrowser) -> None:
        if self.args.warmup_pages:
            pages = min(self.args.warmup_pages, self.site.pages)
            await browser_crawl(launched, self._config(pages, 1))
            await plain_crawl(self.start_url, pages, 1)

    async def level(self, launched: LaunchedBrowser, concurrency: int) -> Level:
        self.console.print(f"concurrency {concurrency}: browser crawl of {self.site.pages} pages...")
        browser = await browser_crawl(launched, self._config(self.site.pages, concurrency))
        plains = [
            await plain_crawl(self.start_url, self.site.pages, concurrency) for _ in range(self.args.plain_repeats)
        ]
        plain = sorted(plains, key=lambda run: run.seconds)[len(plains) // 2]
        self.console.print(
            f"  browser {browser.seconds:.1f} s (mean {browser.mean_page_s} s per page in a tab), "
            f"plain (median of {len(plains)}) {plain.seconds:.2f} s"
        )
        return Level(concurrency, browser, plain, [round(run.seconds, 4) for run in plains])


async def measure(args: argparse.Namespace, site: Site, start_url: str, console: Console) -> dict[str, Any]:
    bench = Bench(args, site, start_url, console)
    start = time.perf_counter()
    launched = await launch_browser()
    launch_s = time.perf_counter() - start
    try:
        version = launched.browser.version
        await bench.warm_up(launched)
        levels = [await bench.level(launched, c) for c in args.levels]
    finally:
        await launched.close()
    return {"levels": levels, "launch_s": launch_s, "executable": launched.executable, "version": version}


# --- report -----------------------------------------------------------------------------------------------------


def found_text(level: Level, site: Site) -> str:
    """``all`` when both crawls found every page and distinct image URL, else what each found (pages, images)."""
    runs = (level.browser, level.plain)
    if all((run.pages_ok, run.distinct_image_urls) == (site.pages, site.distinct_images) for run in runs):
        return "all"
    b, p = runs
    return f"[red]b {b.pages_ok}, {b.distinct_image_urls}; p {p.pages_ok}, {p.distinct_image_urls}"


def speedups(levels: list[Level], side: str) -> dict[str, float]:
    base = getattr(levels[0], side).pages_per_s
    return {str(level.concurrency): round(getattr(level, side).pages_per_s / base, 3) for level in levels}


def print_table(console: Console, levels: list[Level], site: Site, scroll: bool) -> None:
    table = Table(title=f"Crawl of a {site.pages}-page local site: browser (scroll={scroll}) vs plain aiohttp")
    columns = (
        "c",
        "browser pages/s",
        "browser img/s",
        "plain pages/s",
        "plain img/s",
        "pages/s ratio b/p",
        "browser speedup",
        "found",
    )
    for column in columns:
        table.add_column(column, justify="right")
    browser_speedup = speedups(levels, "browser")
    for level in levels:
        b, p = level.browser, level.plain
        table.add_row(
            str(level.concurrency),
            f"{b.pages_per_s:.2f}",
            f"{b.images_per_s:.1f}",
            f"{p.pages_per_s:.1f}",
            f"{p.images_per_s:.1f}",
            f"{level.ratio:.4f}",
            f"{browser_speedup[str(level.concurrency)]:.2f}x",
            found_text(level, site),
        )
    console.print(table)


def sanity(levels: list[Level], site: Site) -> list[str]:
    """Differences between what each crawl found and the site (and between the two crawlers)."""
    problems = []
    for level in levels:
        for name, run in (("browser", level.browser), ("plain", level.plain)):
            if run.pages_ok != site.pages or run.pages_failed:
                problems.append(
                    f"c={level.concurrency} {name}: {run.pages_ok} pages ok, {run.pages_failed} failed "
                    f"of {site.pages} ({run.errors or 'no errors'})"
                )
            if run.distinct_image_urls != site.distinct_images or run.sightings != site.sightings:
                problems.append(
                    f"c={level.concurrency} {name}: {run.distinct_image_urls}/{site.distinct_images} "
                    f"distinct image URLs, {run.sightings}/{site.sightings} sightings"
                )
        if level.browser.distinct_image_urls != level.plain.distinct_image_urls:
            problems.append(
                f"c={level.concurrency}: browser found {level.browser.distinct_image_urls} distinct "
                f"image URLs, plain {level.plain.distinct_image_urls}"
            )
    return problems


def run_json(run: Run) -> dict[str, Any]:
    return {
        **asdict(run),
        "seconds": round(run.seconds, 4),
        "pages_per_s": round(run.pages_per_s, 3),
        "images_per_s": round(run.images_per_s, 3),
    }


def summary(
    args: argparse.Namespace, site: Site, measured: dict[str, Any], load_before: tuple[float, ...], problems: list[str]
) -> dict[str, Any]:
    levels: list[Level] = measured["levels"]
    return {
        "benchmark": "crawl",
        "settings": {
            "pages": args.pages,
            "concurrency": args.levels,
            "scroll": not args.no_scroll,
            "plain_repeats": args.plain_repeats,
            "warmup_pages": args.warmup_pages,
            "seed": args.seed,
            "max_depth": MAX_DEPTH,
            "quick": args.quick,
        },
        "site": {
            "pages": site.pages,
            "images_per_page": OWN_IMAGES + SHARED_IMAGES,
            "own_per_page": OWN_IMAGES,
            "shared_per_page": SHARED_IMAGES,
            "distinct_images": site.distinct_images,
            "sightings": site.sightings,
            "image_side": IMAGE_SIDE,
            "links_per_page": LINKS_PER_PAGE,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "chromium": measured["executable"],
            "chromium_version": measured["version"],
        },
        "browser_launch_s": round(measured["launch_s"], 3),
        "levels": [
            {
                "concurrency": level.concurrency,
                "browser": run_json(level.browser),
                "plain": run_json(level.plain),
                "plain_seconds_all": level.plain_seconds_all,
                "browser_over_plain_pages_per_s": round(level.ratio, 5),
                "plain_over_browser_time": round(1 / level.ratio, 2) if level.ratio else None,
            }
            for level in levels
        ],
        "browser_speedup": speedups(levels, "browser"),
        "plain_speedup": speedups(levels, "plain"),
        "sanity_ok": not problems,
        "sanity_problems": problems,
    }


def report(
    console: Console, args: argparse.Namespace, site: Site, measured: dict[str, Any], load_before: tuple[float, ...]
) -> dict[str, Any]:
    levels: list[Level] = measured["levels"]
    print_table(console, levels, site, not args.no_scroll)
    console.print(
        f"Chromium {measured['version']} ({measured['executable']}) launched in {measured['launch_s']:.2f} s "
        "(not in the rates)"
    )
    browser_speedup = speedups(levels, "browser")
    console.print(
        "browser speedup over c="
        + f"{levels[0].concurrency}: "
        + ", ".join(f"c={c}: {s:.2f}x" for c, s in browser_speedup.items())
    )
    for level in levels:
        console.print(
            f"c={level.concurrency}: the browser takes {1 / level.ratio:.1f}x the plain fetcher's time per page"
        )
    problems = sanity(levels, site)
    for problem in problems:
        console.print(f"[red]sanity: {problem}")
    if not problems:
        console.print(
            f"[green]sanity: both crawlers found all {site.pages} pages and {site.distinct_images} "
            "distinct image URLs at every level"
        )
    return summary(args, site, measured, load_before, problems)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(quiet=args.json_only, width=None if sys.stdout.isatty() else 120)
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="benchmark-crawl-"))
    server = None
    try:
        site = generate_site(folder / "site", args.pages, args.seed)
        console.print(f"site: {site.pages} pages, {site.distinct_images} distinct images in {folder}")
        server, port = start_server(site.root)
        measured = asyncio.run(measure(args, site, f"http://127.0.0.1:{port}/", console))
    except BrowserNotFoundError as err:
        console.print(f"[red]{err}")
        return 2
    finally:
        if server is not None:
            stop_server(server)
        if args.keep_site:
            console.print(f"site and crawl states kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    result = report(console, args, site, measured, load_before)
    text = json.dumps(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
