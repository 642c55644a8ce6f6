"""``scanner crawl <site>``: crawl with the Playwright engine (``scanner.crawl``), hand each page's images as one
scan to a submitter, follow the verdicts while the crawl goes on, and report.

The submitter is the local intake by default (``scanner.local``: the API's own intake function called in this
process, SQLite and in-process analysis), or with ``--api URL --key K`` a server over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scanner.client import ScannerClient, Upload
from scanner.crawl import CrawlConfig, Crawler, PageResult
from scanner.csvsafe import safe_row
from scanner.explain import MEANING, describe, label_text
from scanner.privatefs import private_dir, write_private
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


@asynccontextmanager
async def submitter_for(settings: Settings, api: str | None, key: str | None) -> AsyncIterator[Submitter]:
    """The server of ``--api``, or the local intake: this process records and analyses (no loopback server)."""
    if api:
        if not key:
            raise ValueError("--api needs --key (create one with `scanner keys create --name crawler`)")
        async with ScannerClient(api, key) as client:
            yield client
        return
    from scanner.local import LocalSubmitter

    # The local intake analyses in this process, whatever broker the settings name.
    async with LocalSubmitter(settings.model_copy(update={"broker_url": None, "result_backend": None})) as local:
        yield local


async def crawl_and_scan(
    config: CrawlConfig, client: Submitter, resume: bool = False, console: Console | None = None
) -> CrawlOutcome:
    console = console or Console(stderr=True)
    key = await client.whoami()  # a bad key or an unreachable server stops here, before the browser starts
    if "scans:write" not in key["scopes"]:
        raise ValueError(f"the key {key['id']} lacks the scope scans:write")
    outcome = _earlier_outcome(config) if resume else None
    outcome = outcome or CrawlOutcome(site=config.start_url, mode="")
    started = time.monotonic() - outcome.elapsed_s
    try:
        await _crawl_pages(config, client, resume, console, outcome)
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
    config: CrawlConfig, client: Submitter, resume: bool, console: Console, outcome: CrawlOutcome
) -> None:
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
    client: Submitter, outcome: CrawlOutcome, progress: Progress, task: Any, stats: Any, timeout_s: float = 3600
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
            table.add_row(page["url"], describe(page["error"]))
        console.print(table)
    _print_refused(outcome, console)
    if outcome.flagged:
        console.print(_flagged_table(outcome.flagged))
        console.print(f"[dim]{MEANING}[/]", highlight=False)
    else:
        console.print("no image was flagged")
    for error in outcome.submit_errors[:10]:
        console.print(f"[red]submission failed[/] {error}")


def _flagged_table(flagged: list[ImageOutcome]) -> Table:
    table = Table(title="flagged images (possibly adversarial)")
    for column in ("image", "label", "score", "threshold", "pages", "first seen on"):
        table.add_column(column, overflow="fold")
    for image in sorted(flagged, key=lambda i: -(i.score or 0)):
        table.add_row(
            _image_name(image), label_text(image.label), f"{image.score:.2f}",
            f"{image.threshold:.2f}" if image.threshold is not None else "-", str(len(image.pages)), image.pages[0],
        )  # fmt: skip
    return table


def _print_refused(outcome: CrawlOutcome, console: Console) -> None:
    refused = [image for image in outcome.images.values() if image.state == "failed"]
    if refused:
        table = Table(title="images the service refused")
        table.add_column("image", overflow="fold")
        table.add_column("reason")
        for image in refused[:20]:
            table.add_row(_image_name(image), describe(image.error))
        console.print(table)


def _image_name(image: ImageOutcome) -> str:
    """The image's URL (a data: URL is shortened); the sha256 only when there is no URL."""
    if not image.url:
        return f"sha256 {image.sha256[:12]}"
    return image.url if not image.url.startswith("data:") else f"{image.url[:40]}... (sha256 {image.sha256[:12]})"


def failure(outcome: CrawlOutcome) -> str | None:
    """Why the crawl as a whole failed (no page reached, or its start page failed); None when it did not."""
    if not outcome.pages:
        return f"the crawl of {outcome.site} reached no page: nothing could be queued"
    start = next((page for page in outcome.pages if page["depth"] == 0), None)
    if all(page["error"] for page in outcome.pages):
        first = start or outcome.pages[0]
        return f"the crawl reached no page: {first['url']}: {describe(first['error'])}"
    if start is not None and start["error"]:
        return f"the start page {start['url']} failed: {describe(start['error'])}"
    return None


def write_json(outcome: CrawlOutcome, path: Path) -> None:
    path.write_text(json.dumps(outcome.to_json(), indent=2))


def write_csv(outcome: CrawlOutcome, path: Path) -> None:
    columns = [
        "sha256", "url", "state", "label", "confidence", "score", "threshold", "flagged", "in_domain", "error", "pages",
    ]  # fmt: skip
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for image in outcome.images.values():
            row = asdict(image)
            row["pages"] = " ".join(image.pages)
            writer.writerow(safe_row(row))  # no cell a spreadsheet would run as a formula


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


def site_url(text: str) -> str:
    """The start URL of ``scanner crawl SITE``: a bare host gets https://, a bare loopback host:port http://
    (a development server rarely speaks TLS); anything else that is not an http(s) URL is refused."""
    text = text.strip()
    if "://" not in text:
        host = text.split("/", 1)[0]
        if not _HOST.match(host):
            raise ValueError(f"not a site: {text!r} (give a URL such as https://shop.example/ or 127.0.0.1:8000)")
        loopback = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        text = f"{'http' if loopback.lower() in LOOPBACK_HOSTS else 'https'}://{text}"
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number or out of range
    except ValueError as err:
        raise ValueError(f"not a site: {text!r} ({err})") from err
    if parts.scheme not in ("http", "https") or not parts.hostname or not _HOST.match(parts.netloc):
        raise ValueError(f"not a site: {text!r} (give a URL such as https://shop.example/ or 127.0.0.1:8000)")
    return text


def check_outputs(*paths: Path | None) -> None:
    """Refuse an output that cannot be written before the crawl starts, not after it ran for an hour."""
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise ValueError(f"cannot write {path}: it is a folder")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise ValueError(f"cannot write {path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise ValueError(f"cannot write {path}: permission denied")


def default_state_path(settings: Settings, start_url: str) -> Path:
    """``data_dir/crawls/<host>.sqlite``; the data folder and ``crawls/`` are made private (0700) on the way,
    tightened if an earlier version or a permissive umask left them open."""
    host = (urlsplit(start_url).hostname or "site").replace(":", "_")
    port = urlsplit(start_url).port
    folder = settings.data_dir / "crawls"
    private_dir(settings.data_dir, tighten=True)
    private_dir(folder, tighten=True)
    return folder / (f"{host}_{port}.sqlite" if port else f"{host}.sqlite")
