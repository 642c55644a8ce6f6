"""Crawl and scan: the Playwright crawler (``scanner.crawl.Crawler``) hands each page's images as one scan to a
submitter, the verdicts are followed while the crawl goes on, and the outcome of the whole crawl is kept.

``scanner crawl``, ``scanner demo`` and the audit runs (``scanner.audits.runner``) share this loop.  The
submitter is the local intake (``scanner.local``: the API's own intake function called in this process) or a
server over HTTP (``scanner.client.ScannerClient``).  Nothing here prints: a caller that shows progress passes
a ``ProgressDisplay`` (``scanner.crawl.progress`` draws the usual one); the report is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from scanner.client import Upload
from scanner.crawl.crawler import Crawler
from scanner.crawl.models import CrawlConfig, CrawlStats, PageResult
from scanner.privatefs import private_dir, write_private
from scanner.settings import MAX_IMAGES_PER_SCAN

POLL_S = 0.5

ShowProgress = Callable[[dict[str, int]], None]
"""Shows the live counts: pages, images, queued, analysed, flagged, errors."""
ProgressDisplay = Callable[[], AbstractContextManager[ShowProgress]]
"""Opened once the browser runs, closed when the verdicts are in; ``ShowProgress`` is called at every change."""


@dataclass
class ImageOutcome:
    sha256: str
    url: str | None
    pages: list[str] = field(default_factory=list)
    state: str = "pending"
    label: str | None = None
    confidence: float | None = None
    score: float | None = None
    threshold: float | None = None
    flagged: bool | None = None
    error: str | None = None
    in_domain: float | None = None


@dataclass
class CrawlOutcome:
    site: str
    mode: str
    pages: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, ImageOutcome] = field(default_factory=dict)
    scans: dict[str, str] = field(default_factory=dict)  # scan id -> status
    elapsed_s: float = 0.0
    submit_errors: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[ImageOutcome]:
        return [image for image in self.images.values() if image.flagged]

    def counts(self) -> dict[str, int]:
        states = [image.state for image in self.images.values()]
        return {
            "pages": len(self.pages),
            "pages_failed": sum(1 for page in self.pages if page["error"]),
            "images": len(self.images),
            "analysed": states.count("done"),
            "pending": states.count("pending"),
            "refused": states.count("failed"),
            "flagged": len(self.flagged),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "mode": self.mode,
            "elapsed_s": round(self.elapsed_s, 2),
            "counts": self.counts(),
            "pages": self.pages,
            "images": [asdict(image) for image in self.images.values()],
            "submit_errors": self.submit_errors,
        }


class Submitter(Protocol):
    """What the crawl feeds: ``scanner.client.ScannerClient`` (a server) or ``scanner.local.LocalSubmitter``."""

    async def whoami(self) -> dict[str, Any]: ...

    async def submit(self, page_url: str | None, uploads: Sequence[Upload], source: str = ...) -> dict[str, Any]: ...

    async def scan(self, scan_id: str) -> dict[str, Any]: ...


async def crawl_and_scan(
    config: CrawlConfig, client: Submitter, resume: bool = False, progress: ProgressDisplay | None = None
) -> CrawlOutcome:
    """Crawl ``config``'s site, submit each page's images and wait for their verdicts.  ``resume`` continues an
    interrupted crawl of the same state file, its outcome included; ``progress`` shows the counts as they change."""
    key = await client.whoami()  # a bad key or an unreachable server stops here, before the browser starts
    if "scans:write" not in key["scopes"]:
        raise ValueError(f"the key {key['id']} lacks the scope scans:write")
    outcome = _earlier_outcome(config) if resume else None
    outcome = outcome or CrawlOutcome(site=config.start_url, mode="")
    started = time.monotonic() - outcome.elapsed_s
    try:
        await _crawl_pages(config, client, resume, progress or _no_progress, outcome)
    finally:
        # Kept even when interrupted: `--resume` then summarises the whole crawl, not only its last part.
        outcome.elapsed_s = time.monotonic() - started
        _keep_outcome(config, outcome)
    return outcome


def _outcome_path(config: CrawlConfig) -> Path | None:
    return config.state_path.with_suffix(".outcome.json") if config.state_path else None


def _earlier_outcome(config: CrawlConfig) -> CrawlOutcome | None:
    path = _outcome_path(config)
    if path is None or not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
        outcome = CrawlOutcome(site=document["site"], mode="", elapsed_s=document["elapsed_s"])
        outcome.pages = document["pages"]
        outcome.images = {i["sha256"]: ImageOutcome(**i) for i in document["images"]}
        outcome.scans = {scan: "pending" for scan in document.get("scans", [])}  # polled again for verdicts
        outcome.submit_errors = document["submit_errors"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unreadable summary is no reason to refuse the resume: the summary starts afresh
    return outcome


def _keep_outcome(config: CrawlConfig, outcome: CrawlOutcome) -> None:
    path = _outcome_path(config)
    if path is not None:
        with contextlib.suppress(OSError):
            private_dir(path.parent)
            write_private(path, json.dumps({**outcome.to_json(), "scans": list(outcome.scans)}))


async def _crawl_pages(
    config: CrawlConfig, client: Submitter, resume: bool, progress: ProgressDisplay, outcome: CrawlOutcome
) -> None:
    async with Crawler(config) as crawler:
        with progress() as show:
            show(_fields(crawler.stats, outcome))
            # Verdicts are followed in the background while pages render, then in the foreground until done.
            poller = asyncio.create_task(_poll_forever(client, outcome))
            try:
                async for page in crawler.crawl(resume=resume):
                    await _submit_page(client, page, outcome)
                    show(_fields(crawler.stats, outcome))
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await _wait_for_verdicts(client, outcome, show, crawler.stats)


def _no_progress() -> AbstractContextManager[ShowProgress]:
    return contextlib.nullcontext(lambda _: None)


def _fields(stats: CrawlStats, outcome: CrawlOutcome) -> dict[str, int]:
    counts = outcome.counts()
    return {
        "pages": stats.pages_done + stats.pages_failed,
        "images": counts["images"],
        "queued": stats.queued,
        "analysed": counts["analysed"],
        "flagged": counts["flagged"],
        "errors": stats.pages_failed + counts["refused"],
    }


async def _submit_page(client: Submitter, page: PageResult, outcome: CrawlOutcome) -> None:
    outcome.pages.append(
        {"url": page.url, "status": page.status, "depth": page.depth, "images": len(page.images), "error": page.error}
    )
    for image in page.images:
        seen = outcome.images.setdefault(image.sha256, ImageOutcome(image.sha256, image.url))
        if page.url not in seen.pages:
            seen.pages.append(page.url)
    for start in range(0, len(page.images), MAX_IMAGES_PER_SCAN):
        chunk = page.images[start : start + MAX_IMAGES_PER_SCAN]
        uploads = [Upload(image.data, image.url if not image.url.startswith("data:") else None) for image in chunk]
        try:
            document = await client.submit(page.url, uploads, source="crawl")
        except Exception as err:  # noqa: BLE001 - one page's failure is reported, the crawl goes on
            outcome.submit_errors.append(f"{page.url}: {err}")
            continue
        _absorb(document, outcome)


def _absorb(document: dict[str, Any], outcome: CrawlOutcome) -> None:
    outcome.scans[document["id"]] = document["status"]
    for item in document["items"]:
        image = outcome.images.get(item["sha256"]) if item["sha256"] else None
        if image is None:
            continue
        image.state = item["state"]
        if item["error"]:
            image.error = item["error"]["code"]
        if item["verdict"]:
            verdict = item["verdict"]
            image.label, image.confidence = verdict["label"], verdict["confidence"]
            image.score, image.flagged = verdict["score"], verdict["flagged"]
            image.threshold, image.in_domain = verdict.get("threshold"), verdict.get("in_domain")


async def _poll_once(client: Submitter, outcome: CrawlOutcome) -> None:
    for scan_id in [scan for scan, status in outcome.scans.items() if status != "done"]:
        _absorb(await client.scan(scan_id), outcome)


async def _poll_forever(client: Submitter, outcome: CrawlOutcome) -> None:
    while True:
        await asyncio.sleep(POLL_S)
        with contextlib.suppress(Exception):  # the final wait reports what is still missing
            await _poll_once(client, outcome)


async def _wait_for_verdicts(
    client: Submitter, outcome: CrawlOutcome, show: ShowProgress, stats: CrawlStats, timeout_s: float = 3600
) -> None:
    deadline = time.monotonic() + timeout_s
    while any(status != "done" for status in outcome.scans.values()) and time.monotonic() < deadline:
        await _poll_once(client, outcome)
        show(_fields(stats, outcome))
        await asyncio.sleep(POLL_S)
