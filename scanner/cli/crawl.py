"""``scanner crawl <site>``: crawl with Chromium and scan every image a visitor sees (``scanner.crawl.scan``),
then report: a table on the terminal, and the whole outcome as JSON or CSV on request.

The submitter is the local intake by default (``scanner.local``: the API's own intake function called in this
process, SQLite and in-process analysis), or with ``--api URL --key K`` a server over HTTP.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from scanner import terminal
from scanner.csvsafe import safe_row
from scanner.explain import MEANING, describe, label_text
from scanner.helpformat import HelpFormatter
from scanner.privatefs import private_dir
from scanner.settings import Settings
from scanner.siteurl import api_url, site_url

if TYPE_CHECKING:  # the crawler loads Playwright: imported when a crawl runs, not when the parser is built
    from scanner.crawl import CrawlConfig
    from scanner.crawl.scan import CrawlOutcome, ImageOutcome, Submitter


def add_parser(sub: Any) -> None:
    crawl = sub.add_parser(
        "crawl", help="crawl a site and scan every image a visitor sees", formatter_class=HelpFormatter
    )
    crawl.add_argument(
        "site", help="start URL, e.g. https://shop.example/ (a bare host gets https://, a bare 127.0.0.1:8000 http://)"
    )
    crawl.add_argument("--max-pages", type=int, default=100, help="stop after this many pages")
    crawl.add_argument("--max-depth", type=int, default=5, help="links followed from the start page")
    crawl.add_argument("--include", action="append", default=[], help="regex a URL must match (repeatable)")
    crawl.add_argument("--exclude", action="append", default=[], help="regex that excludes a URL (repeatable)")
    crawl.add_argument("--subdomains", action="store_true", help="also crawl subdomains of the site")
    crawl.add_argument("--concurrency", type=int, default=4, help="pages rendered at once")
    crawl.add_argument("--per-host", type=int, default=2, help="pages in flight per host")
    crawl.add_argument("--delay", type=float, default=0.0, help="seconds between requests to one host")
    crawl.add_argument("--timeout", type=float, default=30.0, help="seconds per page")
    crawl.add_argument("--min-size", type=int, default=50, help="skip images smaller than this (pixels)")
    crawl.add_argument("--ignore-robots", action="store_true", help="do not honour robots.txt (your own site only)")
    crawl.add_argument("--no-sitemaps", action="store_true", help="do not read sitemap.xml for more pages")
    crawl.add_argument("--resume", action="store_true", help="continue an interrupted crawl of this site")
    crawl.add_argument("--browser", help="Chromium executable (default: Playwright's, else Debian's chromium)")
    crawl.add_argument("--api", help="submit to this scanner server instead of the embedded one")
    crawl.add_argument("--key", help="API key for --api")
    crawl.add_argument("--json", type=Path, help="write the full report as JSON")
    crawl.add_argument("--csv", type=Path, help="write one row per image as CSV")
    crawl.add_argument("--fail-on-flagged", action="store_true", help="exit with status 3 if any image is flagged")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        site = site_url(args.site)
        check_outputs(args.json, args.csv)
        config = _crawl_config(args, settings, site)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    outcome = _run_crawl(args, settings, config)
    if isinstance(outcome, int):
        return outcome
    print_report(outcome, terminal.console())
    try:
        if args.json:
            write_json(outcome, args.json)
        if args.csv:
            write_csv(outcome, args.csv)
    except OSError as err:
        print(f"error: cannot write the report: {err}", file=sys.stderr)
        return 2
    reason = failure(outcome)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    return 3 if args.fail_on_flagged and outcome.flagged else 0


def _crawl_config(args: argparse.Namespace, settings: Settings, site: str) -> CrawlConfig:
    from scanner.crawl import CrawlConfig

    # The options' own names in messages: people typed --max-pages, not max_pages.
    if args.max_pages < 1 or args.concurrency < 1 or args.per_host < 1:
        raise ValueError("--max-pages, --concurrency and --per-host must be at least 1")
    if args.max_depth < 0 or args.min_size < 0 or args.delay < 0 or args.timeout <= 0:
        raise ValueError("--max-depth, --min-size and --delay must not be negative, --timeout must be positive")
    for pattern in (*args.include, *args.exclude):
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"--include/--exclude {pattern!r} is not a regular expression: {err}") from err
    return CrawlConfig(
        start_url=site,
        max_pages=args.max_pages,
        max_depth=args.max_depth,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        allow_subdomains=args.subdomains,
        concurrency=args.concurrency,
        per_host_concurrency=args.per_host,
        delay_s=args.delay,
        page_timeout_s=args.timeout,
        respect_robots=not args.ignore_robots,
        use_sitemaps=not args.no_sitemaps,
        min_image_size=args.min_size,
        max_image_bytes=settings.max_image_bytes,
        browser_path=args.browser,
        state_path=default_state_path(settings, site),
    )


def _run_crawl(args: argparse.Namespace, settings: Settings, config: CrawlConfig) -> CrawlOutcome | int:
    """The crawl's outcome, or the exit status of a crawl that could not run to its end."""
    import asyncio

    from scanner.client import ApiError
    from scanner.crawl import BrowserNotFoundError, StateLockedError
    from scanner.crawl.progress import crawl_progress
    from scanner.crawl.scan import crawl_and_scan

    async def run() -> CrawlOutcome:
        async with submitter_for(settings, args.api, args.key) as submitter:
            progress = crawl_progress(terminal.console(stderr=True))
            outcome = await crawl_and_scan(config, submitter, args.resume, progress)
            outcome.mode = f"server {args.api}" if args.api else "embedded"
            return outcome

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        _quiet_after_interrupt()
        print(f"interrupted; `scanner crawl {args.site} --resume` continues where it stopped", file=sys.stderr)
        return 130
    except (BrowserNotFoundError, StateLockedError, ValueError, ApiError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the server of --api is not there
        print(f"error: {err.strerror or err}", file=sys.stderr)
        return 2


def _quiet_after_interrupt() -> None:
    """After Ctrl-C the browser and its driver die with the terminal's signal; what they leave behind (tasks
    whose exceptions nobody reads any more) is noise, not news, for the person who pressed it."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda _: None


@asynccontextmanager
async def submitter_for(settings: Settings, api: str | None, key: str | None) -> AsyncIterator[Submitter]:
    """The server of ``--api``, or the local intake: this process records and analyses (no loopback server)."""
    if api:
        if not key:
            raise ValueError("--api needs --key (create one with `scanner keys create --name crawler`)")
        from scanner.client import ScannerClient

        async with ScannerClient(api_url(api), key) as client:
            yield client
        return
    from scanner.local import LocalSubmitter

    # The local intake analyses in this process, whatever broker the settings name.
    async with LocalSubmitter(settings.model_copy(update={"broker_url": None, "result_backend": None})) as local:
        yield local


# --- the report ------------------------------------------------------------------------------------------------


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
