"""The crawl's public value types: what to crawl (CrawlConfig) and what a crawl yields (PageResult, FoundImage).

They are plain frozen dataclasses so that the caller (which posts each page's images to the API) can keep,
compare and log them without touching Playwright objects, which die with their browser context.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from scanner.fetch import FetchPolicy

DEFAULT_USER_AGENT = "robust-image-scanner-crawler/0.1 (+https://github.com/)"


@dataclass(frozen=True)
class CrawlConfig:
    """What to crawl and how politely. Regexes in ``include``/``exclude`` are searched in the absolute URL."""

    start_url: str
    max_pages: int = 100
    max_depth: int = 5
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    same_site: bool = True
    allow_subdomains: bool = False
    concurrency: int = 4
    per_host_concurrency: int = 2
    delay_s: float = 0.0
    page_timeout_s: float = 30.0
    retries: int = 2
    respect_robots: bool = True
    use_sitemaps: bool = True
    min_image_size: int = 50
    max_image_bytes: int = 16 * 1024 * 1024
    scroll: bool = True
    user_agent: str = DEFAULT_USER_AGENT
    state_path: Path | None = None
    browser_path: str | None = None
    # Beyond the basics: the trap cap, the back-off base and the context recycling period.
    max_query_variants: int = 20
    retry_backoff_s: float = 1.0
    recycle_context_after: int = 50
    # Set for crawls made on a tenant's behalf (audits): every request of the crawl obeys the fetcher's
    # address and port rules (scanner.crawl.guard). None: the user's own crawl, loopback sites included.
    network_policy: FetchPolicy | None = None

    def __post_init__(self) -> None:
        for name in ("max_pages", "concurrency", "per_host_concurrency", "max_query_variants", "recycle_context_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("max_depth", "retries", "min_image_size", "max_image_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        from scanner.crawl.patterns import pattern_error

        for pattern in (*self.include, *self.exclude):
            if (error := pattern_error(pattern)) is not None:
                raise ValueError(error)
        if self.delay_s < 0 or self.retry_backoff_s < 0 or self.page_timeout_s <= 0:
            raise ValueError("delay_s and retry_backoff_s must not be negative, page_timeout_s must be positive")


@dataclass(frozen=True)
class FoundImage:
    """One image seen on a page, with the bytes the browser received (or fetched once per crawl)."""

    url: str
    data: bytes = field(repr=False)
    sha256: str
    content_type: str | None
    kind: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class PageResult:
    """One crawled page. ``error`` is None on success; a page with an error carries no images."""

    url: str
    requested_url: str
    status: int | None
    depth: int
    images: list[FoundImage]
    error: str | None
    elapsed_s: float


@dataclass
class CrawlStats:
    """Live counters for a progress display; updated in place while the crawl runs."""

    pages_done: int = 0
    pages_failed: int = 0
    images_found: int = 0  # sightings reported (an image on three pages counts three times)
    images_unique: int = 0  # distinct image contents kept
    images_skipped: int = 0  # too large, broken, not an image
    bytes: int = 0  # bytes of the distinct images kept
    queued: int = 0  # frontier size
    in_flight: int = 0
    skipped: int = 0  # URLs not crawled: robots, scope, traps, depth, filters

    def reset(self) -> None:
        for item in fields(self):
            setattr(self, item.name, item.default)
