"""``scanner crawl <site>``: crawl with the Playwright engine (``scanner.crawl``), submit each page's images to
the API as one scan, follow the verdicts while the crawl goes on, and report.

Embedded by default (the API on a loopback port in this process, SQLite and in-process analysis); with
``--api URL --key K`` the same submissions go to a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scanner.client import ScannerClient, Upload
from scanner.crawl import CrawlConfig, Crawler, PageResult
from scanner.csvsafe import safe_row
from scanner.settings import Settings

POLL_S = 0.5
MAX_IMAGES_PER_SCAN = 256  # the API's default cap; larger pages are sent as several scans


@dataclass
class ImageOutcome:
    sha256: str
    url: str | None
    pages: list[str] = field(default_factory=list)
    state: str = "pending"
    label: str | None = None
    confidence: float | None = None
    score: float | None = None
    flagged: bool | None = None
    error: str | None = None


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


@asynccontextmanager
async def service_for(settings: Settings, api: str | None, key: str | None) -> AsyncIterator[tuple[str, str]]:
    """(base URL, key) of the service the crawl submits to: ``--api`` or the embedded one."""
    if api:
        if not key:
            raise ValueError("--api needs --key (create one with `scanner keys create --name crawler`)")
        yield api, key
        return
    from scanner.embedded import embedded_service

    # A crawl submits one scan per page as fast as pages render: no rate limit against oneself.
    local = settings.model_copy(update={"rate_limit_per_minute": 10**9, "rate_limit_burst": 10**9})
    async with embedded_service(local) as service:
        yield service.base_url, service.key


async def crawl_and_scan(
    config: CrawlConfig, client: ScannerClient, resume: bool = False, console: Console | None = None
) -> CrawlOutcome:
    console = console or Console(stderr=True)
    key = await client.whoami()  # a bad key or an unreachable server stops here, before the browser starts
    if "scans:write" not in key["scopes"]:
        raise ValueError(f"the key {key['id']} lacks the scope scans:write")
    outcome = CrawlOutcome(site=config.start_url, mode="")
    started = time.monotonic()
    async with Crawler(config) as crawler:
        with _progress(console) as progress:
            task = progress.add_task("crawl", total=None, **_fields(crawler.stats, outcome))
            # Verdicts are followed in the background while pages render, then in the foreground until done.
            poller = asyncio.create_task(_poll_forever(client, outcome))
            try:
                async for page in crawler.crawl(resume=resume):
                    await _submit_page(client, page, outcome)
                    progress.update(task, **_fields(crawler.stats, outcome))
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await _wait_for_verdicts(client, outcome, progress, task, crawler.stats)
    outcome.elapsed_s = time.monotonic() - started
    return outcome


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.fields[pages]}[/] pages"),
        BarColumn(bar_width=20),
        TextColumn(
            "{task.fields[images]} images  {task.fields[queued]} queued  {task.fields[analysed]} analysed  "
            "[red]{task.fields[flagged]} flagged[/]  {task.fields[errors]} errors"
        ),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _fields(stats: Any, outcome: CrawlOutcome) -> dict[str, int]:
    counts = outcome.counts()
    return {
        "pages": stats.pages_done + stats.pages_failed,
        "images": counts["images"],
        "queued": stats.queued,
        "analysed": counts["analysed"],
        "flagged": counts["flagged"],
        "errors": stats.pages_failed + counts["refused"],
    }


async def _submit_page(client: ScannerClient, page: PageResult, outcome: CrawlOutcome) -> None:
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


async def _poll_once(client: ScannerClient, outcome: CrawlOutcome) -> None:
    for scan_id in [scan for scan, status in outcome.scans.items() if status != "done"]:
        _absorb(await client.scan(scan_id), outcome)


async def _poll_forever(client: ScannerClient, outcome: CrawlOutcome) -> None:
    while True:
        await asyncio.sleep(POLL_S)
        with contextlib.suppress(Exception):  # the final wait reports what is still missing
            await _poll_once(client, outcome)


async def _wait_for_verdicts(
    client: ScannerClient, outcome: CrawlOutcome, progress: Progress, task: Any, stats: Any, timeout_s: float = 3600
) -> None:
    deadline = time.monotonic() + timeout_s
    while any(status != "done" for status in outcome.scans.values()) and time.monotonic() < deadline:
        await _poll_once(client, outcome)
        progress.update(task, **_fields(stats, outcome))
        await asyncio.sleep(POLL_S)


# --- reporting --------------------------------------------------------------------------------------------------


def print_report(outcome: CrawlOutcome, console: Console) -> None:
    counts = outcome.counts()
    summary = Table(title=f"crawl of {outcome.site} ({outcome.mode}, {outcome.elapsed_s:.1f} s)")
    for name in counts:
        summary.add_column(name.replace("_", " "), justify="right")
    summary.add_row(*(str(value) for value in counts.values()))
    console.print(summary)
    failed = [page for page in outcome.pages if page["error"]]
    if failed:
        table = Table(title="pages that failed")
        table.add_column("page")
        table.add_column("error")
        for page in failed[:20]:
            table.add_row(page["url"], page["error"])
        console.print(table)
    if outcome.flagged:
        table = Table(title="flagged images (possibly adversarial)")
        for column in ("sha256", "label", "score", "pages", "first seen on"):
            table.add_column(column)
        for image in sorted(outcome.flagged, key=lambda i: -(i.score or 0)):
            table.add_row(
                image.sha256[:12], image.label or "", f"{image.score:.2f}", str(len(image.pages)), image.pages[0]
            )
        console.print(table)
    else:
        console.print("no image was flagged")
    for error in outcome.submit_errors[:10]:
        console.print(f"[red]submission failed[/] {error}")


def write_json(outcome: CrawlOutcome, path: Path) -> None:
    path.write_text(json.dumps(outcome.to_json(), indent=2))


def write_csv(outcome: CrawlOutcome, path: Path) -> None:
    columns = ["sha256", "url", "state", "label", "confidence", "score", "flagged", "error", "pages"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for image in outcome.images.values():
            row = asdict(image)
            row["pages"] = " ".join(image.pages)
            writer.writerow(safe_row(row))  # no cell a spreadsheet would run as a formula


def default_state_path(settings: Settings, start_url: str) -> Path:
    host = (urlsplit(start_url).hostname or "site").replace(":", "_")
    port = urlsplit(start_url).port
    return settings.data_dir / "crawls" / (f"{host}_{port}.sqlite" if port else f"{host}.sqlite")
