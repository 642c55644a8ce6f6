"""Crawls of small fixture sites, one behaviour each: traps, politeness, resume, context recycling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from scanner.crawl import CrawlConfig, Crawler, StateLockedError
from scanner.crawl.browser import PagePool
from scanner.crawl.state import CrawlState
from tests.support.sites import Site, blob, html, png, status

FAST = {"use_sitemaps": False, "scroll": False, "retry_backoff_s": 0.05, "page_timeout_s": 10}


def calendar(request: web.Request) -> web.Response:
    month = int(request.query.get("month", "1"))
    body = f"<h1>month {month}</h1><a href='/calendar?month={month + 1}'>next</a>"
    return web.Response(text=f"<!doctype html><html><body>{body}</body></html>", content_type="text/html")


async def calendar_handler(request: web.Request) -> web.StreamResponse:
    return calendar(request)


async def loop_handler(request: web.Request) -> web.StreamResponse:
    body = "<a href='loop/'>deeper</a>"  # resolves against itself: /loop/, /loop/loop/, /loop/loop/loop/, ...
    return web.Response(text=f"<!doctype html><html><body>{body}</body></html>", content_type="text/html")


def test_calendar_and_path_traps_stop_under_the_caps(crawl_all) -> None:  # type: ignore[no-untyped-def]
    with Site() as site:
        site.routes["/"] = html("<a href='/calendar?month=1'>calendar</a> <a href='/loop/'>loop</a>")
        site.routes["/calendar"] = calendar_handler
        for depth in range(1, 40):
            site.routes["/loop" * depth + "/"] = loop_handler
        config = CrawlConfig(start_url=site.url("/"), max_pages=200, max_depth=100, max_query_variants=5,
                             per_host_concurrency=4, **FAST)  # type: ignore[arg-type]
        results = crawl_all(config)
    months = sorted(r.url for r in results if "/calendar" in r.url)
    loops = sorted(r.url for r in results if "/loop" in r.url)
    assert months == [site.url(f"/calendar?month={m}") for m in range(1, 6)]  # the query-variant cap
    assert loops == [site.url("/loop/"), site.url("/loop/loop/")]  # a segment repeated 3 times is a trap
    assert len(results) == 8 and all(r.error is None for r in results)


def test_per_host_concurrency_and_crawl_delay(crawl_all) -> None:  # type: ignore[no-untyped-def]
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.Response(text="<p>slow</p>", content_type="text/html")

    with Site() as site:
        site.routes["/"] = html("".join(f"<a href='/slow/{i}'>{i}</a>" for i in range(6)))
        for i in range(6):
            site.routes[f"/slow/{i}"] = slow
        config = CrawlConfig(start_url=site.url("/"), concurrency=4, per_host_concurrency=2, **FAST)  # type: ignore[arg-type]
        results = crawl_all(config)
        assert len(results) == 7 and site.max_in_flight == 2

    with Site() as polite:
        polite.routes["/"] = html("<a href='/slow/a'>a</a><a href='/slow/b'>b</a>")
        polite.routes["/slow/a"] = polite.routes["/slow/b"] = html("<p>page</p>")
        polite.routes["/robots.txt"] = blob(b"User-agent: *\nCrawl-delay: 0.6\n", "text/plain")
        config = CrawlConfig(start_url=polite.url("/"), concurrency=4, per_host_concurrency=2, **FAST)  # type: ignore[arg-type]
        assert len(crawl_all(config)) == 3
        starts = [h.start for h in polite.hits if not h.path.startswith(("/robots.txt", "/favicon"))]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert len(starts) == 3 and min(gaps) >= 0.9  # 0.6 s rounded up to 1 s (less request latency jitter)


def test_timeouts_and_dropped_connections_are_retried_then_reported(crawl_all) -> None:  # type: ignore[no-untyped-def]
    # The page timeout must let a dropped connection be reported as such on a loaded machine (Chromium retries
    # it once first), so it is a few seconds, and /hang outlasts it by as much again.
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(8)
        return web.Response(text="late", content_type="text/html")

    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response(text="never sent")

    with Site() as site:
        site.routes["/"] = html("<a href='/hang'>hang</a> <a href='/drop'>drop</a>")
        site.routes["/hang"], site.routes["/drop"] = hang, drop
        config = CrawlConfig(start_url=site.url("/"), **{**FAST, "page_timeout_s": 4.0}, retries=1)  # type: ignore[arg-type]
        results = {r.requested_url: r for r in crawl_all(config)}
        assert site.count("/hang") == 2
        assert 2 <= site.count("/drop") <= 4  # Chromium itself retries once when a reused connection closes
    assert results[site.url("/hang")].error == "timeout" and results[site.url("/hang")].status is None
    assert results[site.url("/drop")].error == "network_error"
    assert results[site.url("/")].error is None


def resume_site() -> dict[str, object]:
    """Six pages, each with the same CSS image on a hidden element: the browser never loads it, we fetch it."""
    hidden = "<div style='display:none;width:60px;height:60px;background:url(/img/shared.png)'>x</div>"
    routes: dict[str, object] = {"/img/shared.png": blob(png(60, 60, (1, 2, 3)))}
    routes["/"] = html("".join(f"<a href='/p{i}'>{i}</a>" for i in range(5)) + hidden)
    for i in range(5):
        routes[f"/p{i}"] = html(f"<p>{i}</p>{hidden}")
    return routes


def test_resume_after_interruption_crawls_each_page_once(crawl_all, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Site() as site:
        site.routes.update(resume_site())  # type: ignore[arg-type]
        full = crawl_all(CrawlConfig(start_url=site.url("/"), **FAST))  # type: ignore[arg-type]
        assert site.count("/img/shared.png") == 1
        state = tmp_path / "crawl.sqlite3"
        config = CrawlConfig(start_url=site.url("/"), state_path=state, **FAST)  # type: ignore[arg-type]
        first = crawl_all(config, stop_after=2)
        second = crawl_all(config, resume=True)
        assert site.count("/img/shared.png") == 2  # once for the full crawl, once for interrupted + resumed
        again = crawl_all(CrawlConfig(start_url=site.url("/"), state_path=state, max_pages=1, **FAST))  # type: ignore[arg-type]
    urls_first, urls_second = [r.url for r in first], [r.url for r in second]
    assert len(urls_first) == 2 and not set(urls_first) & set(urls_second)
    assert sorted(urls_first + urls_second) == sorted(r.url for r in full) and len(full) == 6
    assert all(len(r.images) == 1 and r.images[0].data for r in first + second)
    assert [r.url for r in again] == [site.url("/")]  # resume=False starts afresh


def test_state_file_is_locked_to_one_crawl(tmp_path: Path) -> None:
    state = CrawlState(tmp_path / "s.sqlite3", resume=False)
    try:
        with pytest.raises(StateLockedError):
            CrawlState(tmp_path / "s.sqlite3", resume=True)
    finally:
        state.close()
    CrawlState(tmp_path / "s.sqlite3", resume=True).close()


def test_resume_refuses_another_sites_state(crawl_all, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Site() as site:
        site.routes["/"] = html("<p>only</p>")
        state = tmp_path / "crawl.sqlite3"
        crawl_all(CrawlConfig(start_url=site.url("/"), state_path=state, **FAST))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="belongs to a crawl of"):
            crawl_all(CrawlConfig(start_url=site.url("/other"), state_path=state, **FAST), resume=True)  # type: ignore[arg-type]


def test_contexts_are_recycled_and_closed(run, browser) -> None:  # type: ignore[no-untyped-def]
    async def go() -> tuple[int, list[int]]:
        pool = PagePool(browser, user_agent="test", recycle_after=2)
        open_contexts = []
        for _ in range(5):
            async with pool.page() as page:
                await page.set_content("<p>x</p>")
                open_contexts.append(len(browser.contexts))
        await pool.close()
        return pool.contexts_created, open_contexts + [len(browser.contexts)]

    created, counts = run(go())
    assert created == 3 and max(counts) == 1 and counts[-1] == 0


def test_crawl_needs_the_context_manager(run, browser) -> None:  # type: ignore[no-untyped-def]
    crawler = Crawler(CrawlConfig(start_url="http://127.0.0.1:9/"), browser=browser)

    async def go() -> None:
        async for _ in crawler.crawl():
            pass

    with pytest.raises(RuntimeError, match="async with"):
        run(go())


def test_unreachable_robots_means_nothing_is_crawled_unless_robots_are_ignored(crawl_all) -> None:  # type: ignore[no-untyped-def]
    with Site() as site:
        site.routes["/"] = html("<p>home</p>")
        site.routes["/robots.txt"] = status(503)
        results = crawl_all(CrawlConfig(start_url=site.url("/"), **FAST))  # type: ignore[arg-type]
        assert [(r.error, r.status) for r in results] == [("robots_unavailable", None)]
        assert site.count("/") == 0
        ignoring = crawl_all(CrawlConfig(start_url=site.url("/"), respect_robots=False, **FAST))  # type: ignore[arg-type]
        assert [r.error for r in ignoring] == [None] and site.count("/") == 1
