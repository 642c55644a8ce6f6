"""The crawl engine: a polite Playwright crawler that finds the images a person actually sees on a site.

It yields one PageResult per page, with each image's bytes; it does not analyse or submit them. Modules, one job
each: ``urls`` (normalisation, scope, traps), ``state``/``frontier``/``imagestore`` (the resumable SQLite state),
``robots``/``sitemaps``/``textfetch`` (site metadata over aiohttp), ``politeness`` (per-host pacing),
``browser``/``render``/``extract``/``images`` (Chromium, page loading, image discovery and bytes) and
``crawler`` (the scheduler tying them together).  Above the engine, ``scan`` hands each page's images to a
submitter and follows their verdicts (the loop ``scanner crawl``, ``scanner demo`` and the audit runs share), and
``progress`` draws its live progress line.
"""

from scanner.crawl.browser import BrowserNotFoundError, find_chromium, launch_browser
from scanner.crawl.crawler import Crawler
from scanner.crawl.models import CrawlConfig, CrawlStats, FoundImage, PageResult
from scanner.crawl.state import StateLockedError

__all__ = [
    "BrowserNotFoundError",
    "CrawlConfig",
    "CrawlStats",
    "Crawler",
    "FoundImage",
    "PageResult",
    "StateLockedError",
    "find_chromium",
    "launch_browser",
]
