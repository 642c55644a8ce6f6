"""Speed of the scanner service on loopback: end-to-end analysis through ONE worker against the bare engine on the
same images, and known-verdict lookups.

What it measures
    The benchmark starts the service itself (``benchmarks/_service.py``): a private ``redis-server`` on a free
    port, a temporary data folder (SQLite there, or ``--database-url``), ``scanner db upgrade``, one API key,
    ``scanner serve`` and ``scanner worker --concurrency 1``; rate limits are lifted.  It drives them from this
    process with ``aiohttp`` and stops them all at the end (errors, Ctrl-C and SIGTERM included).

    1. End-to-end throughput: ``--images`` new, distinct 32x32 PNGs (random pixels) submitted as scans of
       ``--batch`` images each (multipart, four requests at a time; the API hands each scan to Celery as one
       task); the time runs from the first request to the last scan's ``finished_at`` (the server's clock; the
       client polls the oldest unfinished scan).  Then the bare engine in this process
       (``worker.engine.load_engine`` with the same bundles, device, batch and torch threads as the worker):
       ``engine.analyse`` over the same PNG bytes in batches of the same size.  Both were warmed up on the same
       ``--batch`` warm-up images.  ``--rounds`` rounds on new images each; the medians give the ratio
       e2e / bare images per second (target: at least 0.7).  These rounds run first, on a fresh database.
    2. Known-verdict lookups, at each ``--concurrency`` level (one ``TCPConnector(limit=c)`` per level, a few
       untimed requests first), ``--requests`` requests or ``--max-seconds``, whichever comes first:
       * ``GET /v1/scans/{id}`` of a finished one-image scan (200);
       * ``POST /v1/scans``, multipart with one image whose verdict exists (answered at once: 201).
       Requests/s, p50 and p99 latency, and requests/s relative to the lowest concurrency.
    3. One more end-to-end round after the lookups, whose POSTs have added thousands of scans: how the worker's
       throughput holds up as the database grows (reported beside the rounds, not in the medians).

    The machine is shared and noisy: read the ratios, measured side by side in one run, not the absolute times.
    Threads: ``--threads`` (default 1) torch/OpenMP threads for the worker and the bare engine alike, so that
    on 2 cores the API, the worker and this client do not fight over the CPU.

Usage
    python benchmarks/api.py [--concurrency 1,4,16,64] [--requests 2000] [--max-seconds 12] [--images 512]
        [--batch 64] [--rounds 3] [--threads 1] [--database-url postgresql://postgres@127.0.0.1:5432/bench]
        [--robust DIR] [--standard DIR] [--device auto] [--seed N] [--out results/benchmark_api.json]
        [--quick] [--json-only] [--keep-data]

``--quick`` is a smoke test (concurrency 1,4; 200 requests; 64 images; one round).  Needs ``redis-server``
(``apt-get install redis-server``).  Rich tables go to stdout, then one final JSON line (only that line with
``--json-only``); ``--out`` writes the same JSON to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import io
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/api.py` from anywhere

from benchmarks._service import REPO_ROOT, Service, ServiceConfig, ServiceError, thread_env  # noqa: E402

DEFAULT_ROBUST = REPO_ROOT / "models" / "pgd-at-preact18-w0.25"
DEFAULT_STANDARD = REPO_ROOT / "models" / "standard-preact18-w0.25"
TARGET_E2E_OVER_BARE = 0.7
IMAGE_SIDE = 32
FULL = {"concurrency": "1,4,16,64", "requests": 2000, "images": 512, "rounds": 3}
QUICK = {"concurrency": "1,4", "requests": 200, "images": 64, "rounds": 1}
SETTINGS = ("requests", "max_seconds", "images", "batch", "rounds", "threads", "device", "seed", "quick")
Call = Callable[[], Awaitable[str | None]]  # one request: None, or what went wrong


# --- arguments and images -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--concurrency", help=f"comma-separated levels (default {FULL['concurrency']})")
    parser.add_argument("--requests", type=int, help=f"requests per level and endpoint (default {FULL['requests']})")
    parser.add_argument("--max-seconds", type=float, default=12.0, help="cap on the time of one level")
    parser.add_argument("--images", type=int, help=f"new images per end-to-end round (default {FULL['images']})")
    parser.add_argument("--batch", type=int, default=64, help="images per scan = SCANNER_BATCH_SIZE = bare batch")
    parser.add_argument("--rounds", type=int, help=f"end-to-end + bare rounds (default {FULL['rounds']})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker and the bare engine")
    parser.add_argument("--database-url", help="e.g. postgresql://postgres@127.0.0.1:5432/bench (default: SQLite)")
    parser.add_argument("--robust", type=Path, default=DEFAULT_ROBUST, help="robust model bundle folder")
    parser.add_argument("--standard", type=Path, default=DEFAULT_STANDARD, help="standard companion bundle folder")
    parser.add_argument("--device", default="auto", help="engine device of the worker and the bare engine")
    parser.add_argument("--seed", type=int, help="image seed (default: random, so a reused database never knows them)")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="seconds between polls of a pending scan")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up waiting for scans after this long")
    parser.add_argument("--out", type=Path, help="write the JSON result here (e.g. results/benchmark_api.json)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1,4; 200 requests; 64 images; 1 round")
    parser.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data folder and logs")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.levels = [int(level) for level in args.concurrency.split(",")]
    except ValueError:
        parser.error("--concurrency takes integers separated by commas, e.g. 1,4,16,64")
    if min(args.levels) < 1 or min(args.requests, args.images, args.batch, args.rounds, args.threads) < 1:
        parser.error("concurrency levels, --requests, --images, --batch, --rounds and --threads must be >= 1")
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    args.robust, args.standard = args.robust.resolve(), args.standard.resolve()
    return args


def png_images(n: int, seed: int) -> list[bytes]:
    """``n`` CIFAR-sized PNGs of uniform random pixels: distinct bytes (checked)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    files = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        files.append(buffer.getvalue())
    if len({hashlib.sha256(f).digest() for f in files}) != n:
        raise RuntimeError(f"seed {seed} gave two identical images; pass another --seed")
    return files


def image_form(images: list[bytes], prefix: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for index, data in enumerate(images):
        form.add_field("image", data, filename=f"{prefix}-{index}.png", content_type="image/png")
    return form


# --- one request, many requests ---------------------------------------------------------------------------------


async def request(session: aiohttp.ClientSession, method: str, url: str, expect: int, data: Any = None) -> str | None:
    try:
        async with session.request(method, url, data=data) as response:
            body = await response.read()
            return None if response.status == expect else f"HTTP {response.status}: {body[:300]!r}"
    except (aiohttp.ClientError, TimeoutError) as err:
        return f"{type(err).__name__}: {err}"


async def drive(call: Call, n: int, concurrency: int, max_seconds: float) -> tuple[list[float], list[str], float]:
    """``n`` calls (or until ``max_seconds``) from ``concurrency`` lanes; latencies, failures and wall seconds."""
    latencies: list[float] = []
    failures: list[str] = []
    budget = n
    deadline = time.perf_counter() + max_seconds

    async def lane() -> None:
        nonlocal budget
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            start = time.perf_counter()
            error = await call()
            latencies.append(time.perf_counter() - start)
            if error is not None:
                failures.append(error)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies, failures, time.perf_counter() - start


def new_session(service: Service, limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"Authorization": f"Bearer {service.api_key}"},
        timeout=aiohttp.ClientTimeout(total=120),
    )


# --- 1. known-verdict lookups ------------------------------------------------------------------------------------


@dataclass
class Level:
    endpoint: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    warmup_requests: int
    first_error: str | None = None


def level_of(
    endpoint: str, concurrency: int, latencies: list[float], failures: list[str], seconds: float, warmup: int
) -> Level:
    ms = np.asarray(latencies) * 1000
    return Level(
        endpoint, concurrency, len(latencies), len(failures), round(seconds, 3), round(len(latencies) / seconds, 1),
        round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 99)), 2), warmup,
        failures[0] if failures else None,
    )  # fmt: skip


GET_SCAN, POST_SCAN = "GET /v1/scans/{id}", "POST /v1/scans"


def lookup_call(session: aiohttp.ClientSession, base_url: str, endpoint: str, scan_id: str, known: bytes) -> Call:
    if endpoint == GET_SCAN:
        return lambda: request(session, "GET", f"{base_url}/v1/scans/{scan_id}", 200)
    return lambda: request(session, "POST", f"{base_url}/v1/scans", 201, image_form([known], "known"))


async def measure_level(
    service: Service, endpoint: str, concurrency: int, args: argparse.Namespace, scan_id: str, known: bytes
) -> Level:
    async with new_session(service, concurrency) as session:
        call = lookup_call(session, service.base_url, endpoint, scan_id, known)
        warmup, _, _ = await drive(call, min(args.requests, 2 * concurrency), concurrency, args.max_seconds)
        latencies, failures, seconds = await drive(call, args.requests, concurrency, args.max_seconds)
    return level_of(endpoint, concurrency, latencies, failures, seconds, len(warmup))


async def measure_lookups(service: Service, args: argparse.Namespace, scan_id: str, known: bytes) -> list[Level]:
    levels = []
    for concurrency in args.levels:
        for endpoint in (GET_SCAN, POST_SCAN):
            levels.append(await measure_level(service, endpoint, concurrency, args, scan_id, known))
            service.check_alive()
    return levels


# --- scans: submit and wait ----------------------------------------------------------------------------------------


async def submit_scan(session: aiohttp.ClientSession, base_url: str, images: list[bytes], prefix: str) -> dict:
    async with session.post(f"{base_url}/v1/scans", data=image_form(images, prefix)) as response:
        body = await response.read()
        if response.status not in (201, 202):
            raise ServiceError(f"POST /v1/scans answered {response.status}: {body[:500]!r}")
        return json.loads(body)


async def scan_document(session: aiohttp.ClientSession, base_url: str, scan_id: str) -> dict:
    async with session.get(f"{base_url}/v1/scans/{scan_id}") as response:
        body = await response.read()
        if response.status != 200:
            raise ServiceError(f"GET /v1/scans/{scan_id} answered {response.status}: {body[:500]!r}")
        return json.loads(body)


async def wait_scans(
    session: aiohttp.ClientSession, service: Service, scan_ids: list[str], poll_s: float, timeout_s: float
) -> list[dict]:
    """The finished documents, in order; polls the oldest unfinished scan (the worker takes them in order)."""
    deadline = time.monotonic() + timeout_s
    documents: list[dict] = []
    for scan_id in scan_ids:
        while (document := await scan_document(session, service.base_url, scan_id))["status"] != "done":
            service.check_alive()
            if time.monotonic() > deadline:
                counts = document["counts"]
                raise ServiceError(f"scan {scan_id} still {document['status']} after {timeout_s:g} s: {counts}")
            await asyncio.sleep(poll_s)
        documents.append(document)
    return documents


def finished_at(documents: list[dict]) -> float:
    """The server's time (epoch seconds) at which the last of these scans finished."""
    return max(dt.datetime.fromisoformat(d["finished_at"]).timestamp() for d in documents)


def count_items(documents: list[dict], state: str) -> int:
    return sum(document["counts"][state] for document in documents)


def analysed_before(documents: list[dict], moment: float) -> int:
    """Items whose verdict is older than ``moment`` (epoch seconds): images the service already knew."""
    return sum(
        1
        for document in documents
        for item in document["items"]
        if item["verdict"] and dt.datetime.fromisoformat(item["verdict"]["analysed_at"]).timestamp() < moment
    )


async def warm_up(service: Service, args: argparse.Namespace, warm: list[bytes]) -> str:
    """The worker's first batch (it also proves the worker is up), then the one-image scan the lookups read."""
    async with new_session(service, 4) as session:
        first = await submit_scan(session, service.base_url, warm, "warm")
        documents = await wait_scans(session, service, [first["id"]], args.poll_interval, args.timeout)
        if count_items(documents, "done") != len(warm):
            raise ServiceError(f"the warm-up scan did not finish cleanly: {documents[0]['counts']}")
        known = await submit_scan(session, service.base_url, warm[:1], "known")
    if known["status"] != "done":
        raise ServiceError(f"a scan of a known image was not done at once: {known['status']}")
    return str(known["id"])


# --- 2. end to end against the bare engine ------------------------------------------------------------------------


@dataclass
class Round:
    label: str
    images: int
    scans: int
    e2e_seconds: float
    e2e_observed_seconds: float
    submit_seconds: float
    failed_items: int
    known_before: int
    bare_seconds: float
    e2e_per_second: float = 0.0
    bare_per_second: float = 0.0
    ratio: float = 0.0

    def __post_init__(self) -> None:
        for name in ("e2e_seconds", "e2e_observed_seconds", "submit_seconds", "bare_seconds"):
            setattr(self, name, round(getattr(self, name), 4))
        self.e2e_per_second = round(self.images / self.e2e_seconds, 1)
        self.bare_per_second = round(self.images / self.bare_seconds, 1)
        self.ratio = round(self.e2e_per_second / self.bare_per_second, 3)


async def end_to_end(service: Service, args: argparse.Namespace, images: list[bytes]) -> dict[str, float]:
    chunks = [images[start : start + args.batch] for start in range(0, len(images), args.batch)]
    async with new_session(service, 4) as session:
        started_wall, started = time.time(), time.perf_counter()
        submitted = await asyncio.gather(
            *(submit_scan(session, service.base_url, chunk, f"e2e{i}") for i, chunk in enumerate(chunks))
        )
        submit_seconds = time.perf_counter() - started
        scan_ids = [document["id"] for document in submitted]
        documents = await wait_scans(session, service, scan_ids, args.poll_interval, args.timeout)
        observed = time.perf_counter() - started
    server = finished_at(documents) - started_wall
    return {
        "scans": len(chunks),
        "e2e_seconds": server if 0 < server <= observed + 1 else observed,  # the server's clock, if it is sane
        "e2e_observed_seconds": observed,
        "submit_seconds": submit_seconds,
        "failed_items": count_items(documents, "failed"),
        "known_before": analysed_before(documents, started_wall),
    }


def bare_seconds(engine: Any, images: list[bytes], batch: int) -> float:
    start = time.perf_counter()
    for offset in range(0, len(images), batch):
        results = engine.analyse(images[offset : offset + batch])
        if not all(hasattr(result, "to_dict") for result in results):
            raise RuntimeError(f"the bare engine refused an image: {[r for r in results if not hasattr(r, 'to_dict')]}")
    return time.perf_counter() - start


def load_bare_engine(args: argparse.Namespace, warm: list[bytes]) -> Any:
    """The worker's engine, built the way ``scanner.analysis.tasks`` builds it, warmed up on its warm-up batch."""
    from worker.engine import load_engine

    engine = load_engine(str(args.robust), str(args.standard), None, args.device, args.batch, args.threads)
    engine.analyse(warm)
    return engine


async def measure_round(service: Service, args: argparse.Namespace, engine: Any, label: str, seed: int) -> Round:
    """End to end on new images, then the bare engine on the same images."""
    images = png_images(args.images, seed)
    e2e = await end_to_end(service, args, images)
    return Round(label=label, images=len(images), bare_seconds=bare_seconds(engine, images, args.batch), **e2e)


def scans_created(rounds: list[Round], levels: list[Level]) -> int:
    """Scans in the database: warm-up and known-image scans, the rounds' scans, every lookup POST."""
    posts = sum(level.requests + level.warmup_requests for level in levels if level.endpoint == POST_SCAN)
    return 2 + sum(r.scans for r in rounds) + posts


# --- the run ---------------------------------------------------------------------------------------------------------


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def service_config(args: argparse.Namespace) -> ServiceConfig:
    return ServiceConfig(
        batch=args.batch, threads=args.threads, robust=args.robust, standard=args.standard, device=args.device,
        database_url=args.database_url, keep_data=args.keep_data,
    )  # fmt: skip


async def run(service: Service, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    warm = png_images(args.batch, args.seed)
    with console.status("waiting for the worker (warm-up scan)"):
        scan_id = await warm_up(service, args, warm)
    engine = load_bare_engine(args, warm)
    rounds = []
    for index in range(args.rounds):
        with console.status(f"round {index + 1}: end to end through one worker, then the bare engine"):
            rounds.append(await measure_round(service, args, engine, str(index + 1), args.seed + 1 + index))
    with console.status("known-verdict lookups"):
        levels = await measure_lookups(service, args, scan_id, warm[0])
    scans = scans_created(rounds, levels)
    with console.status(f"end to end again, {scans} scans in the database"):
        aged = await measure_round(service, args, engine, f"after lookups ({scans} scans)", args.seed + 1 + args.rounds)
    return {"levels": levels, "rounds": rounds, "aged": aged, "engine": engine}


def database_label(url: str | None) -> str:
    if not url:
        return "sqlite (temporary file)"
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def machine_info(args: argparse.Namespace, engine: Any, load_before: tuple[float, float, float]) -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(engine.device),
        "batch": args.batch,
        "database": database_label(args.database_url),
        "robust": str(args.robust),
        "standard": str(args.standard),
    }


# --- output ----------------------------------------------------------------------------------------------------------


def lookup_table(levels: list[Level]) -> Table:
    table = Table(title="Known-verdict lookups (one image, verdict exists)")
    columns = ("endpoint", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms", "x c=1 req/s")
    for column in columns:
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    lowest = min(level.concurrency for level in levels)
    base = {level.endpoint: level.per_second for level in levels if level.concurrency == lowest}
    for level in levels:
        table.add_row(
            level.endpoint, str(level.concurrency), str(level.requests),
            f"[red]{level.errors}" if level.errors else "0", f"{level.per_second:.1f}", f"{level.p50_ms:.1f}",
            f"{level.p99_ms:.1f}", f"{level.per_second / base[level.endpoint]:.2f}",
        )  # fmt: skip
    return table


def rounds_table(rounds: list[Round], aged: Round, args: argparse.Namespace) -> Table:
    title = f"End to end through one worker vs the bare engine, batch {args.batch}, {args.threads} thread(s)"
    table = Table(title=title)
    columns = ("round", "images", "scans", "submit s", "e2e s", "e2e img/s", "bare s", "bare img/s", "e2e / bare")
    for column in columns:
        table.add_column(column, justify="left" if column == "round" else "right")
    for r in [*rounds, aged]:
        table.add_row(
            r.label, str(r.images), str(r.scans), f"{r.submit_seconds:.2f}", f"{r.e2e_seconds:.2f}",
            f"{r.e2e_per_second:.1f}", f"{r.bare_seconds:.2f}", f"{r.bare_per_second:.1f}", f"{r.ratio:.2f}",
            end_section=r is rounds[-1],
        )  # fmt: skip
    return table


def summarise(args: argparse.Namespace, outcome: dict[str, Any], machine: dict) -> dict[str, Any]:
    levels, rounds, aged = outcome["levels"], outcome["rounds"], outcome["aged"]
    e2e = statistics.median(r.e2e_per_second for r in rounds)
    bare = statistics.median(r.bare_per_second for r in rounds)
    ratio = e2e / bare
    return {
        "benchmark": "api",
        "machine": machine,
        "settings": {name: getattr(args, name) for name in SETTINGS} | {"concurrency": args.levels},
        "lookups": [asdict(level) for level in levels],
        "rounds": [asdict(r) for r in rounds],
        "e2e_images_per_second": round(e2e, 1),
        "bare_images_per_second": round(bare, 1),
        "e2e_over_bare": round(ratio, 3),
        "target": {"e2e_over_bare": f">= {TARGET_E2E_OVER_BARE}", "met": ratio >= TARGET_E2E_OVER_BARE},
        "after_lookups": asdict(aged),
        "errors": sum(level.errors for level in levels) + sum(r.failed_items + r.known_before for r in [*rounds, aged]),
    }


def report(console: Console, args: argparse.Namespace, summary: dict, outcome: dict[str, Any]) -> None:
    console.print(lookup_table(outcome["levels"]))
    for level in outcome["levels"]:
        if level.first_error:
            where = f"{level.endpoint} c={level.concurrency}"
            console.print(f"[red]{where}: {level.errors} errors, first: {level.first_error}")
    rounds, aged = outcome["rounds"], outcome["aged"]
    console.print(rounds_table(rounds, aged, args))
    for r in [*rounds, aged]:
        if r.failed_items or r.known_before:
            console.print(f"[red]round {r.label}: {r.failed_items} failed items, {r.known_before} known before")
    met = summary["target"]["met"]
    console.print(
        f"end to end {summary['e2e_images_per_second']:.1f} images/s, "
        f"bare engine {summary['bare_images_per_second']:.1f} images/s (medians of {len(rounds)} round(s)): "
        f"e2e / bare = {summary['e2e_over_bare']:.2f} "
        f"(target >= {TARGET_E2E_OVER_BARE:g}) " + ("[green]met" if met else "[red]not met")
    )
    console.print(f"{aged.label}: e2e / bare = {aged.ratio:.2f} (a database that has grown; not in the medians)")
    machine = summary["machine"]
    console.print(
        f"{machine['cpu_count']} CPUs (load {machine['load_average_before'][0]:.2f} before), torch threads "
        f"{machine['torch_threads']}, device {machine['device']}, batch {args.batch}, database {machine['database']}"
    )


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Start the service, run both parts, stop the service (whatever happens)."""
    service = Service(service_config(args))
    try:
        with service:
            return asyncio.run(run(service, args, console))
    finally:
        if args.keep_data:
            Console(stderr=True).print(f"data folder and logs kept in {service.data_dir}")


def finish(args: argparse.Namespace, console: Console, outcome: dict[str, Any], load_before: tuple) -> int:
    machine = machine_info(args, outcome["engine"], load_before)
    summary = summarise(args, outcome, machine)
    report(console, args, summary, outcome)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 1 if summary["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(thread_env(args.threads))  # before torch is imported, as for the worker
    console = Console(quiet=args.json_only, width=None if sys.stdout.isatty() else 120)
    errors = Console(stderr=True)
    if shutil.which("redis-server") is None:
        errors.print("[red]redis-server is not on PATH: apt-get install redis-server")
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    load_before = os.getloadavg()
    try:
        outcome = measure(args, console)
    except ServiceError as err:
        errors.print(f"[red]{err}")
        return 1
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted: the service processes were stopped")
        return 130
    return finish(args, console, outcome, load_before)


if __name__ == "__main__":
    sys.exit(main())
