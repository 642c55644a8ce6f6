"""Cost of the query shield per query, beside decoding a 512 px JPEG, at 10^4, 10^5 and 10^6 stored queries.

What it measures
    For each backend and size N: an index holding N queries of one tenant (the worst case: every look-up
    meets all of them), spread over 10,000 clients; then ``--queries`` fresh queries, each timed for, in turn
    (interleaved, so machine noise hits all alike):

    * ``decode``: ``worker.engine.imaging.decode_image`` of a 512x512 JPEG (quality 85) cut from a packaged
      photo: what the service does with every image anyway, the yardstick;
    * ``fingerprint``: ``scanner.shield.fingerprint`` of that decoded image;
    * ``check``: ``Shield.check`` with the fingerprint: the duplicate check, the look-up, the verification, the
      decision and the insertion (for Redis: the script's round trip on a local server).

    The stored fingerprints are real: those of CIFAR-10 images (``--base`` of them, in the tarball's order);
    beyond that, new ones made of theirs: each of a copy's three groups of bands (the index keys) comes from a
    different base image, so every key keeps the popularity it has among real images (the popular ones fill
    their chains) while the copies are distinct pictures.  The fresh queries are other CIFAR-10 images.

    Timing: decode and fingerprint run ``--repeats`` times per query and the fastest counts (``timeit``'s
    rule); the check runs once.  Both wall time and the thread's CPU time are kept; the in-process ratio uses
    CPU time, since the machines this runs on are shared (the wall time adds the waits other processes
    impose), and Redis' ratio the wall time (its work is in the server).

Target
    shield (fingerprint + check) at most 0.2x the decode at 10^6 stored queries (in-process backend).

Usage
    python benchmarks/shield.py [--sizes 10000,100000,1000000] [--redis-sizes 10000,100000] [--queries 2000]
        [--base 20000] [--redis-url URL] [--out results/benchmark_shield.json]

The rich table goes to stdout; the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from scanner.shield.fingerprint import DEFAULT, Spec, fingerprint
from scanner.shield.index import MemoryIndex, RedisIndex
from scanner.shield.sessions import Shield
from worker.engine.imaging import decode_image

REPO = Path(__file__).resolve().parents[1]
CIFAR_CANDIDATES = (
    REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz",
    Path("/work/shared/data/cifar10-jpeg.tar.gz"),
)
CLIENTS = 10_000
HOT = 5  # a value held by this many base images is a shared (flat) window: copies keep it


def cifar_images(count: int) -> Iterator[np.ndarray]:
    path = next((p for p in CIFAR_CANDIDATES if p.exists()), None)
    if path is None:
        raise SystemExit("cifar10-jpeg.tar.gz not found beside the project (../shared/data)")
    taken = 0
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile() or taken >= count:
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            yield np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            taken += 1


def photo_jpegs(count: int) -> list[bytes]:
    """512x512 JPEG crops (quality 85) of the packaged photos (worker.research.web_images' wallpapers)."""
    from worker.research import web_images

    installed = [p for p in web_images.PACKAGES if Path(f"/usr/share/doc/{p}/copyright").is_file()]
    wallpapers = [p for p in installed if web_images.PACKAGES[p].kind == "wallpaper"]
    if not wallpapers:
        raise SystemExit("no wallpaper package installed: python -m worker.research.web_images build")
    files = sorted({f for p in wallpapers for f in web_images._package_files(p)})
    rng, out = random.Random(0), []
    for path in rng.sample(files, min(count, len(files))):
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = rng.randrange(image.width - side + 1), rng.randrange(image.height - side + 1)
            crop = image.crop((left, top, left + side, top + side)).resize((512, 512), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


class Fill:
    """Stored fingerprints: the base ones, then new ones made of theirs.  A perceptual hash's copy takes each
    of its groups of bands (the index keys) from a different base image, so every key keeps the popularity
    it has among real images while the copies are distinct pictures (they match neither each other nor the
    base); a window fingerprint's copy renames its values, except those many images share."""

    def __init__(self, base: Sequence[np.ndarray], spec: Spec = DEFAULT) -> None:
        self.spec = spec
        self.base = [fp for fp in base if fp.size == spec.top] if spec.kind == "phash" else list(base)
        counts = Counter(v for fp in self.base for v in fp.tolist())
        self.hot = np.array(sorted(v for v, n in counts.items() if n >= HOT), dtype=np.uint32)
        self.groups = np.array_split(np.arange(spec.top), max(1, spec.top - spec.threshold + 1))

    def __call__(self, i: int) -> np.ndarray:
        n = len(self.base)
        fp, copy = self.base[i % n], i // n
        if copy == 0:
            return fp
        if self.spec.kind == "phash":
            out = fp.copy()
            for g, bands in enumerate(self.groups):  # group g from image i + copy * (a prime of its own)
                out[bands] = self.base[(i + copy * (7919, 104729, 1299709)[g % 3] * (g + 1)) % n][bands]
            return out
        renamed = (fp.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(copy * 0x85EBCA77)) & np.uint64(
            0xFFFFFFFF
        )  # unsigned array arithmetic wraps
        out = np.where(np.isin(fp, self.hot), fp, renamed.astype(np.uint32))
        out[out == 0] = 1
        return np.unique(out)


def fill(shield: Shield, source: Fill, count: int, rng: random.Random) -> float:
    started = time.perf_counter()
    for i in range(count):
        sha = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        shield.check(1, f"client-{rng.randrange(CLIENTS)}", sha, fp=source(i), at=float(i))
    return time.perf_counter() - started


def measure(
    shield: Shield, jpegs: Sequence[bytes], probes: Sequence[np.ndarray], start_at: float, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Per query: decode, fingerprint, check, each timed in wall seconds and in this thread's CPU seconds.
    Decode and fingerprint are repeated ``repeats`` times in turn and the fastest kept (``timeit``'s rule:
    other processes only ever add time); the check changes the index, so it runs once per query."""
    timings: dict[str, dict[str, list[float]]] = {"wall": defaultdict(list), "cpu": defaultdict(list)}
    rng = random.Random(1)
    for j, probe_fp in enumerate(probes):
        data = jpegs[j % len(jpegs)]
        best: dict[str, list[float]] = {"decode": [], "fingerprint": []}
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.thread_time()
            image = decode_image(data)
            w1, c1 = time.perf_counter(), time.thread_time()
            fingerprint(image, shield.index.spec)
            w2, c2 = time.perf_counter(), time.thread_time()
            best["decode"].append((w1 - w0, c1 - c0))
            best["fingerprint"].append((w2 - w1, c2 - c1))
        sha = hashlib.sha256(b"probe" + j.to_bytes(8, "little")).hexdigest()
        client = f"client-{rng.randrange(CLIENTS)}"
        w0, c0 = time.perf_counter(), time.thread_time()
        shield.check(1, client, sha, fp=probe_fp, at=start_at + j)
        best["check"] = [(time.perf_counter() - w0, time.thread_time() - c0)]
        for name, pairs in best.items():
            timings["wall"][name].append(min(w for w, _ in pairs))
            timings["cpu"][name].append(min(c for _, c in pairs))
    return timings


def measure_isolated(
    shield: Shield, jpegs: Sequence[bytes], probes: Sequence[np.ndarray], start_at: float
) -> dict[str, float]:
    """Each step in a loop of its own (CPU microseconds, median): what a step costs with warm caches, where the
    interleaved run also pays for what the decode evicted."""
    decode, prints, checks = [], [], []
    for data in jpegs:
        for _ in range(3):
            c0 = time.thread_time()
            image = decode_image(data)
            decode.append(time.thread_time() - c0)
        for _ in range(3):
            c0 = time.thread_time()
            fingerprint(image, shield.index.spec)
            prints.append(time.thread_time() - c0)
    for j, probe_fp in enumerate(probes):
        sha = hashlib.sha256(b"isolated" + j.to_bytes(8, "little")).hexdigest()
        c0 = time.thread_time()
        shield.check(1, f"client-{j % CLIENTS}", sha, fp=probe_fp, at=start_at + j)
        checks.append(time.thread_time() - c0)
    us = {k: round(statistics.median(v) * 1e6, 1) for k, v in (("decode", decode), ("fingerprint", prints),
                                                               ("check", checks))}  # fmt: skip
    return {**us, "shield_over_decode": round((us["fingerprint"] + us["check"]) / us["decode"], 3)}


def _stats(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        "median_us": {k: round(statistics.median(v) * 1e6, 1) for k, v in values.items()},
        "p90_us": {k: round(float(np.percentile(v, 90)) * 1e6, 1) for k, v in values.items()},
        "mean_us": {k: round(statistics.fmean(v) * 1e6, 1) for k, v in values.items()},
    }


def summarise(
    backend: str, size: int, timings: dict[str, dict[str, list[float]]], extra: dict[str, object]
) -> dict[str, object]:
    wall, cpu = _stats(timings["wall"]), _stats(timings["cpu"])
    basis = cpu if backend == "memory" else wall  # Redis works in its own process: only the wall time sees it

    def ratio(stats: dict[str, dict[str, float]], kind: str) -> float:
        us = stats[kind]
        return round((us["fingerprint"] + us["check"]) / us["decode"], 3)

    return {
        "backend": backend,
        "stored": size,
        "basis": "cpu" if basis is cpu else "wall",
        "wall": wall,
        "cpu": cpu,
        "shield_over_decode": ratio(basis, "median_us"),
        "shield_over_decode_mean": ratio(basis, "mean_us"),
        "check_over_decode": round(basis["median_us"]["check"] / basis["median_us"]["decode"], 3),
        "shield_over_decode_wall": ratio(wall, "median_us"),
        **extra,
    }


def memory_run(
    size: int, source: Fill, jpegs: Sequence[bytes], probes: Sequence[np.ndarray], repeats: int
) -> dict[str, object]:
    index = MemoryIndex(capacity=size, window_s=1e12)
    shield = Shield(index)
    fill_s = fill(shield, source, size, random.Random(size))
    timings = measure(shield, jpegs, probes, float(size), repeats)
    isolated = measure_isolated(shield, jpegs, probes, float(size) + len(probes))
    nbytes = sum(v.nbytes for v in vars(index).values() if isinstance(v, np.ndarray))
    # the dict of keys: its table plus an int object for every key and every sequence number
    keys = sys.getsizeof(index._heads) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in index._heads.items())
    extra = {"fill_s": round(fill_s, 1), "arrays_mb": round(nbytes / 2**20, 1), "keys_mb": round(keys / 2**20, 1),
             "isolated_cpu": isolated}  # fmt: skip
    return summarise("memory", size, timings, extra)


def redis_run(
    url: str, size: int, source: Fill, jpegs: Sequence[bytes], probes: Sequence[np.ndarray], repeats: int
) -> dict[str, object]:
    index = RedisIndex(url, window_s=1e9, prefix=f"bench{size}")
    index.client.flushdb()
    before = int(index.client.info("memory")["used_memory"])
    shield = Shield(index)
    fill_s = fill(shield, source, size, random.Random(size))
    used = int(index.client.info("memory")["used_memory"]) - before
    timings = measure(shield, jpegs, probes, float(size), repeats)
    index.client.flushdb()
    index.close()
    return summarise("redis", size, timings, {"fill_s": round(fill_s, 1), "bytes_per_query": round(used / size)})


def local_redis() -> tuple[str, Callable[[], None]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not installed: give --redis-url or --redis-sizes ''")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)

    def stop() -> None:
        process.terminate()
        process.wait(10)

    return f"redis://127.0.0.1:{port}/0", stop


def show(rows: Sequence[dict[str, object]], console: Console) -> None:
    table = Table(title="Query shield cost per query beside decoding a 512 px JPEG (median microseconds)")
    columns = ("backend", "stored", "basis", "decode", "fingerprint", "check", "check p90", "shield / decode",
               "wall ratio", "isolated ratio", "memory")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="left" if name in ("backend", "basis") else "right")
    for r in rows:
        basis = r[r["basis"]]
        us, p90 = basis["median_us"], basis["p90_us"]
        memory = f"{r['arrays_mb']} + {r['keys_mb']} MB" if "arrays_mb" in r else f"{r['bytes_per_query']} B/query"
        table.add_row(
            str(r["backend"]), f"{r['stored']:,}", str(r["basis"]), f"{us['decode']}", f"{us['fingerprint']}",
            f"{us['check']}", f"{p90['check']}", f"{r['shield_over_decode']:.3f}",
            f"{r['shield_over_decode_wall']:.3f}",
            f"{r['isolated_cpu']['shield_over_decode']:.3f}" if "isolated_cpu" in r else "-", memory,
        )  # fmt: skip
    console.print(table)


def _sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="stored queries, in-process backend")
    parser.add_argument("--redis-sizes", default="10000,100000", help="stored queries, Redis backend ('' for none)")
    parser.add_argument("--queries", type=int, default=2000, help="timed queries per size")
    parser.add_argument("--repeats", type=int, default=3, help="decode and fingerprint: fastest of this many")
    parser.add_argument("--base", type=int, default=20000, help="CIFAR-10 images behind the stored fingerprints")
    parser.add_argument("--redis-url", help="a Redis to use (its database is flushed); default: a local server")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmark_shield.json")
    args = parser.parse_args(argv)
    console = Console(width=140)
    images = list(cifar_images(args.base + args.queries))
    base = [fingerprint(x, DEFAULT) for x in images[: args.base]]
    probes = [fingerprint(x, DEFAULT) for x in images[args.base :]]
    jpegs = photo_jpegs(40)
    rows = []
    for size in _sizes(args.sizes):
        rows.append(memory_run(size, Fill(base), jpegs, probes, args.repeats))
        console.print(f"memory {size:,}: cpu {rows[-1]['cpu']['median_us']} wall {rows[-1]['wall']['median_us']}")
        gc.collect()
    if _sizes(args.redis_sizes):
        url, stop = (args.redis_url, lambda: None) if args.redis_url else local_redis()
        try:
            for size in _sizes(args.redis_sizes):
                rows.append(redis_run(url, size, Fill(base), jpegs, probes, args.repeats))
                console.print(f"redis {size:,}: wall {rows[-1]['wall']['median_us']}")
        finally:
            stop()
    show(rows, console)
    report = {
        "benchmark": "shield",
        "spec": DEFAULT.named(),
        "queries": args.queries,
        "repeats": args.repeats,
        "base_images": args.base,
        "cpu_threads_available": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
