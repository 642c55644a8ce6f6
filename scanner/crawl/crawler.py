"""The crawl: a scheduler that claims URLs from the frontier, renders them in the browser and yields results.

One coordinator (the ``crawl()`` generator) starts page tasks, at most ``concurrency`` at once and at most
``per_host_concurrency`` per host, and waits for the first to finish; each page task checks robots.txt, waits
for its host's turn, renders, extracts and collects the images. A finished page is recorded in the frontier
(with its links, in one transaction) right before it is yielded, so what was delivered is exactly what is
``done``: when the caller stops early (``break``), pages still in flight stay ``in_progress`` and a later
``crawl(resume=True)`` does them again, while no delivered page is crawled twice.

Failures never end the crawl: each becomes a PageResult with a stable ``error`` code after its retries
(5xx, 408, 429, timeouts and network errors are retried with exponential back-off, or after Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
from playwright.async_api import Browser, Page

from scanner.crawl.browser import LaunchedBrowser, PagePool, launch_browser
from scanner.crawl.extract import INIT_SCRIPT, extract
from scanner.crawl.frontier import Claim, Completion, Frontier
from scanner.crawl.guard import GuardProxy, browser_proxy, guarded_session
from scanner.crawl.images import ImageCollector, ResponseCapture
from scanner.crawl.imagestore import ImageStore
from scanner.crawl.models import CrawlConfig, CrawlStats, FoundImage, PageResult
from scanner.crawl.patterns import compile_pattern
from scanner.crawl.politeness import HostPacer, parse_retry_after
from scanner.crawl.render import navigate, settle
from scanner.crawl.robots import RobotsCache
from scanner.crawl.sitemaps import read_sitemaps
from scanner.crawl.state import CrawlState
from scanner.crawl.textfetch import new_session
from scanner.crawl.urls import Scope, looks_like_non_page, normalize_url, origin, trap_reason

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
RETRYABLE_ERRORS = frozenset({"timeout", "network_error", "browser_error", "connection_refused", "dns_error"})
SKIP_ERRORS = frozenset({"robots_disallowed", "robots_unavailable", "already_crawled"})
MAX_BACKOFF_S = 60.0
SETTLE_BUDGET_S = 8.0  # rendering after load: idle wait + scrolling + late images, whatever the page does
MAX_SITEMAP_URLS = 50_000
HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class _Outcome:
    """What a page task hands back to the coordinator."""

    result: PageResult
    links: list[str] = field(default_factory=list)
    alias: str | None = None  # the redirect target, claimed for this page
    retry_in: float | None = None  # set when the failure may be retried
    fetched: bool = True


class _LinkRules:
    """Which discovered URLs may be queued: scope, include/exclude regexes, traps, non-page extensions."""

    def __init__(self, config: CrawlConfig, start_url: str) -> None:
        self.scope = Scope(start_url, config.same_site, config.allow_subdomains)
        self.include = [compile_pattern(p) for p in config.include]  # RE2: linear time, whatever the pattern
        self.exclude = [compile_pattern(p) for p in config.exclude]

    def reject_reason(self, url: str) -> str | None:
        if url not in self.scope:
            return "out_of_scope"
        if self.include and not any(p.search(url) for p in self.include):
            return "not_included"
        if any(p.search(url) for p in self.exclude):
            return "excluded"
        if looks_like_non_page(url):
            return "not_a_page"
        return trap_reason(url)


class _CrawlRun:
    """The state of one ``crawl()`` call; ``abort`` (idempotent) stops its tasks and closes its resources."""

    def __init__(self, config: CrawlConfig, browser: Browser, session: aiohttp.ClientSession, stats: CrawlStats,
                 start_url: str, resume: bool, proxy: dict[str, str] | None = None) -> None:
        self.config = config
        self.session = session
        self.stats = stats
        self.start_url = start_url
        self.rules = _LinkRules(config, start_url)
        self.state = CrawlState(config.state_path, resume=resume)
        self.frontier = Frontier(self.state, max_depth=config.max_depth, max_query_variants=config.max_query_variants)
        self.store = ImageStore(self.state)
        self.collector = ImageCollector(self.store, stats, max_bytes=config.max_image_bytes,
                                        min_size=config.min_image_size)
        self.pool = PagePool(browser, user_agent=config.user_agent, recycle_after=config.recycle_context_after,
                             init_script=INIT_SCRIPT, proxy=proxy)
        self.pacer = HostPacer(config.delay_s)
        self.robots = RobotsCache(session, config.user_agent, respect=config.respect_robots)
        self.tasks: dict[asyncio.Task[_Outcome], Claim] = {}
        self.skipped: set[str] = set()
        self.pages_used = 0  # fetched and delivered, this run and the runs it resumes
        self.closed = False

    # -- the coordinator -------------------------------------------------------------------------------------

    async def results(self) -> AsyncIterator[PageResult]:
        try:
            await self._seed()
            while True:
                self._launch()
                if not self.tasks:
                    wait = self._idle_wait()
                    if wait is None:
                        return
                    await asyncio.sleep(wait)
                    continue
                done, _ = await asyncio.wait(self.tasks, timeout=self._idle_wait(), return_when="FIRST_COMPLETED")
                for task in done:
                    result = self._finish(task)
                    if result is not None:
                        yield result
        finally:
            await self.abort()

    def _budget_left(self) -> int:
        return self.config.max_pages - self.pages_used - len(self.tasks)

    def _busy_hosts(self) -> set[str]:
        counts = Counter(claim.host for claim in self.tasks.values())
        return {host for host, n in counts.items() if n >= self.config.per_host_concurrency}

    def _launch(self) -> None:
        while len(self.tasks) < self.config.concurrency and self._budget_left() > 0:
            claim = self.frontier.claim(self._busy_hosts())
            if claim is None:
                break
            self.tasks[asyncio.ensure_future(self._page(claim))] = claim
        self._refresh_stats()

    def _idle_wait(self) -> float | None:
        """How long until another page could start; None when none will (nothing queued, or no budget/slot)."""
        if self._budget_left() <= 0 or len(self.tasks) >= self.config.concurrency:
            return None
        wait = self.frontier.next_ready_in(self._busy_hosts())
        return None if wait is None else max(wait, 0.01)

    def _finish(self, task: asyncio.Task[_Outcome]) -> PageResult | None:
        claim = self.tasks.pop(task)
        outcome = task.result()
        if outcome.retry_in is not None and claim.attempts <= self.config.retries:
            log.info("retrying %s in %.2f s (%s)", claim.url, outcome.retry_in, outcome.result.error)
            self.frontier.retry_later(claim.url, outcome.retry_in)
            return None
        result = outcome.result
        failed = result.error is not None and result.error not in SKIP_ERRORS
        end = Completion("failed" if failed else "done", result.status, result.url, result.error, outcome.fetched)
        self.skipped.update(self.frontier.complete(claim.url, end, outcome.links, claim.depth, outcome.alias))
        self.pages_used += int(outcome.fetched)
        self._count(result)
        self._refresh_stats()
        return result

    def _count(self, result: PageResult) -> None:
        if result.error in SKIP_ERRORS:
            self.skipped.add(result.requested_url)
        elif result.error is not None:
            self.stats.pages_failed += 1
        else:
            self.stats.pages_done += 1

    def _refresh_stats(self) -> None:
        self.stats.queued = self.frontier.queued()
        self.stats.in_flight = len(self.tasks)
        self.stats.skipped = len(self.skipped)

    # -- seeding ---------------------------------------------------------------------------------------------

    async def _seed(self) -> None:
        self.frontier.start(self.start_url)
        self.pages_used = self.frontier.pages_used()
        self.stats.images_unique, self.stats.bytes = self.store.totals()
        self.stats.pages_done, self.stats.pages_failed = self.frontier.delivered_counts()
        if self.config.use_sitemaps and self.state.get_meta("sitemaps_seeded") is None:
            await self._seed_sitemaps()
            self.state.set_meta("sitemaps_seeded", "1")

    async def _seed_sitemaps(self) -> None:
        site = origin(self.start_url)
        roots = [*(await self.robots.rules(site)).sitemaps, f"{site}/sitemap.xml"]
        found = await read_sitemaps(self.session, roots, max_urls=MAX_SITEMAP_URLS)
        urls = self._admit(found)
        self.skipped.update(self.frontier.add(urls, 1, "sitemap"))
        log.info("sitemaps listed %d URLs, %d queued", len(found), len(urls))

    def _admit(self, raw: list[str]) -> list[str]:
        """Normalised URLs that may be queued; the others are counted as skipped."""
        admitted = []
        for link in raw:
            url = normalize_url(link)
            if url is None:
                continue
            if self.rules.reject_reason(url):
                self.skipped.add(url)
            else:
                admitted.append(url)
        return admitted

    # -- one page --------------------------------------------------------------------------------------------

    async def _page(self, claim: Claim) -> _Outcome:
        started = time.monotonic()
        try:
            allowed, why = await self.robots.allowed(claim.url, origin(claim.url))
            if not allowed:
                return _Outcome(self._result(claim, None, None, why, started), fetched=False)
            self.pacer.set_delay(claim.host, await self.robots.crawl_delay(origin(claim.url)))
            async with self.pool.page() as page:
                await self.pacer.wait_turn(claim.host)  # after opening the tab, so the gap is between requests
                started = time.monotonic()
                async with asyncio.timeout(self.config.page_timeout_s * 2 + SETTLE_BUDGET_S + 30):
                    return await self._visit(page, claim, started)
        except TimeoutError:
            return self._failure(claim, None, None, "timeout", started)
        except Exception as exc:  # never let one page end the crawl
            log.warning("page %s failed: %r", claim.url, exc)
            return self._failure(claim, None, None, "browser_error", started)

    async def _visit(self, page: Page, claim: Claim, started: float) -> _Outcome:
        capture = ResponseCapture(page)
        page.on("popup", _close_popup)
        nav = await navigate(page, claim.url, self.config.page_timeout_s)
        final = normalize_url(nav.final_url) or claim.url
        if nav.error is not None:
            return self._failure(claim, nav.status, final, nav.error, started)
        if final not in self.rules.scope:
            return _Outcome(self._result(claim, nav.status, final, "redirected_out_of_scope", started))
        if nav.status is not None and nav.status >= 400:
            return self._http_failure(claim, nav.status, final, nav.retry_after, started)
        alias = None
        if final != claim.url:
            if not self.frontier.claim_alias(final, claim.depth, claim.url):
                return _Outcome(self._result(claim, nav.status, final, "already_crawled", started))
            alias = final
        try:
            return await self._render(page, capture, claim, nav.status, final, nav.content_type, started, alias)
        except BaseException:
            if alias is not None:  # the target was not crawled after all: let it be claimed again
                self.frontier.release(alias)
            raise

    async def _render(self, page: Page, capture: ResponseCapture, claim: Claim, status: int | None, final: str,
                      content_type: str | None, started: float, alias: str | None) -> _Outcome:
        if content_type and not content_type.lower().startswith(HTML_TYPES):
            return _Outcome(self._result(claim, status, final, "not_html", started), alias=alias)
        await settle(page, time.monotonic() + SETTLE_BUDGET_S, self.config.scroll)
        found = await extract(page, self.config.min_image_size)
        images = await self.collector.collect(found.images, capture, page.context, page.url)
        result = self._result(claim, status, final, None, started, images)
        return _Outcome(result, links=self._admit(found.links), alias=alias)

    def _http_failure(self, claim: Claim, status: int, final: str, retry_after: str | None,
                      started: float) -> _Outcome:
        error = f"http_{status}"
        if status not in RETRYABLE_STATUSES:
            return _Outcome(self._result(claim, status, final, error, started))
        wait = parse_retry_after(retry_after) if status in (429, 503) else None
        if wait is not None:
            self.pacer.pause(claim.host, wait)
        return self._failure(claim, status, final, error, started, wait)

    def _failure(self, claim: Claim, status: int | None, final: str | None, error: str, started: float,
                 wait: float | None = None) -> _Outcome:
        retryable = error in RETRYABLE_ERRORS or (status is not None and status in RETRYABLE_STATUSES)
        backoff = min(MAX_BACKOFF_S, self.config.retry_backoff_s * 2 ** (claim.attempts - 1))
        retry_in = (backoff if wait is None else wait) if retryable else None
        return _Outcome(self._result(claim, status, final, error, started), retry_in=retry_in)

    def _result(self, claim: Claim, status: int | None, final: str | None, error: str | None, started: float,
                images: list[FoundImage] | None = None) -> PageResult:
        return PageResult(
            url=final or claim.url,
            requested_url=claim.url,
            status=status,
            depth=claim.depth,
            images=images or [],
            error=error,
            elapsed_s=round(time.monotonic() - started, 3),
        )

    # -- shutdown --------------------------------------------------------------------------------------------

    async def abort(self) -> None:
        """Cancel the page tasks, close the contexts and the state file (in-flight pages stay in_progress)."""
        if self.closed:
            return
        self.closed = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.collector.close()
        await self.pool.close()
        self.robots.close()
        self.state.close()


async def _close_popup(popup: Page) -> None:
    """Windows a page opens (window.open, target=_blank clicks by scripts) are not ours to render."""
    with contextlib.suppress(Exception):
        await popup.close()


class Crawler:
    """A polite Playwright crawler; ``async with Crawler(config) as c: async for page in c.crawl(): ...``.

    ``browser``: an already launched Playwright Browser to use (and leave open), e.g. one shared by several
    crawls; by default the crawler launches its own Chromium and closes it on exit (confined to the guard
    proxy, DNS included, when the config has a network policy: a shared browser should be launched so too).
    """

    def __init__(self, config: CrawlConfig, *, browser: Browser | None = None) -> None:
        start = normalize_url(config.start_url)
        if start is None:
            raise ValueError(f"start_url must be an http(s) URL, got {config.start_url!r}")
        self.config = config
        self.start_url = start
        self.stats = CrawlStats()
        self._browser = browser
        self._launched: LaunchedBrowser | None = None
        self._session: aiohttp.ClientSession | None = None
        self._run: _CrawlRun | None = None
        self._guard: GuardProxy | None = None

    async def __aenter__(self) -> Crawler:
        policy = self.config.network_policy
        if self._browser is None:  # confined: the guard below is its only way out, DNS included
            self._launched = await launch_browser(self.config.browser_path, confined=policy is not None)
            self._browser = self._launched.browser
        if policy is None:
            self._session = new_session(self.config.user_agent)
        else:
            self._guard = await GuardProxy(policy).start()
            self._session = guarded_session(policy, self.config.user_agent)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._run is not None:
            await self._run.abort()
            self._run = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._guard is not None:
            await self._guard.close()
            self._guard = None
        if self._launched is not None:
            await self._launched.close()
            self._launched, self._browser = None, None

    async def crawl(self, resume: bool = False) -> AsyncIterator[PageResult]:
        """Yield each page as it finishes. ``resume``: continue the crawl recorded in ``config.state_path``."""
        if self._browser is None or self._session is None:
            raise RuntimeError("use the crawler inside 'async with Crawler(config) as crawler'")
        if self._run is not None and not self._run.closed:
            raise RuntimeError("this crawler is already crawling")
        if resume and self.config.state_path is None:
            raise ValueError("resume needs config.state_path")
        self.stats.reset()
        proxy = browser_proxy(self._guard.url) if self._guard is not None else None
        self._run = _CrawlRun(self.config, self._browser, self._session, self.stats, self.start_url, resume, proxy)
        async for result in self._run.results():
            yield result
