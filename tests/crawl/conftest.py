"""Crawler test fixtures: one event loop and one real Chromium for all the tests of this package.

Why one loop: a Playwright browser belongs to the event loop that launched it, so sharing one browser across
tests (launching Chromium is the slowest step) needs one loop; the tests stay synchronous and run their
coroutines on it with ``run(...)`` (pytest-asyncio is not used). Each crawl still gets fresh contexts.
Package scope, not session: Chromium is closed once these tests are done, not kept through the rest of the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from playwright.async_api import Browser

from scanner.crawl import CrawlConfig, Crawler, PageResult, launch_browser

T = TypeVar("T")


@pytest.fixture(scope="package")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="package")
def browser(loop: asyncio.AbstractEventLoop) -> Iterator[Browser]:
    launched = loop.run_until_complete(launch_browser())
    yield launched.browser
    loop.run_until_complete(launched.close())


@pytest.fixture(scope="package")
def run(loop: asyncio.AbstractEventLoop) -> Callable[[Awaitable[T]], T]:
    def run(coro: Awaitable[T]) -> T:
        return loop.run_until_complete(coro)  # type: ignore[arg-type]

    return run


@pytest.fixture(scope="package")
def crawl_all(run: Callable[[Awaitable[Any]], Any], browser: Browser) -> Callable[..., list[PageResult]]:
    """crawl_all(config, resume=False, stop_after=None) -> the results, in the order they were yielded."""

    async def crawl(config: CrawlConfig, resume: bool, stop_after: int | None) -> list[PageResult]:
        results: list[PageResult] = []
        async with Crawler(config, browser=browser) as crawler:
            async for page in crawler.crawl(resume=resume):
                results.append(page)
                if stop_after is not None and len(results) >= stop_after:
                    break
        return results

    def crawl_all(config: CrawlConfig, resume: bool = False, stop_after: int | None = None) -> list[PageResult]:
        return run(crawl(config, resume, stop_after))

    return crawl_all
