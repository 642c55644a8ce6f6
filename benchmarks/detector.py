"""Cost of each perturbation-detector design on what the engine feeds it, relative to ``perturbation-cnn2``.

What it measures
    Every design in ``training.models.DETECTOR_ARCHITECTURES`` at the same width, as the engine serves it
    (``worker.engine.serving.for_serving``: eval mode, batch norm folded, channels-last), on two fixed random
    batches: ``--tiles`` native tiles of 64 px (``worker.engine.native.TILE``) and ``--tiles`` model inputs of
    32 px.  Each repeat times every design once in turn (interleaved, so machine noise hits all alike); the
    median seconds are reported as inputs per second and as a ratio to the baseline design.

Target
    The shipped design costs at most 2.5x ``perturbation-cnn2`` per tile: the engine's 512 px verdict budget
    (at most 5x its decode and resize, ``benchmarks/engine.py``) was measured with the shipped
    ``perturbation-pair``, 2.1x ``perturbation-cnn2``.

Usage
    python benchmarks/detector.py [--width 16] [--tiles 96] [--repeats 9] [--threads 1] [--json-only]

The rich table goes to stdout, followed by one final JSON line (only that line with ``--json-only``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from training.models import DETECTOR_ARCHITECTURES, build_model
from worker.engine.native import TILE
from worker.engine.serving import for_serving
from worker.research.train_detector import DEFAULT_ARCH

BASELINE = "perturbation-cnn2"
TARGET_RATIO = 2.5
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
SIZES = {"tile": TILE, "model_input": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--tiles", type=int, default=96, help="inputs per batch (the engine's 16 images x 6 tiles)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.tiles < 1:
        parser.error("need --repeats >= 1 and --tiles >= 1")
    return args


def served(arch: str, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return for_serving(build_model(arch, 2, CIFAR10_MEAN, CIFAR10_STD, width), torch.device("cpu"))


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median seconds per batch, {view: {design: seconds}}."""
    models = {arch: served(arch, args.width) for arch in DETECTOR_ARCHITECTURES}
    generator = torch.Generator().manual_seed(1)
    medians: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for view, side in SIZES.items():
            x = torch.rand(args.tiles, 3, side, side, generator=generator).contiguous(memory_format=torch.channels_last)
            times: dict[str, list[float]] = {arch: [] for arch in models}
            for repeat in range(args.repeats + 1):  # the first round warms up
                for arch, model in models.items():
                    start = time.perf_counter()
                    model(x)
                    if repeat:
                        times[arch].append(time.perf_counter() - start)
            medians[view] = {arch: statistics.median(t) for arch, t in times.items()}
    return medians


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    medians = measure(args)
    ratios = {view: {a: s / m[BASELINE] for a, s in m.items()} for view, m in medians.items()}
    shipped = ratios["tile"][DEFAULT_ARCH]
    result = {
        "benchmark": "detector",
        "width": args.width,
        "batch": args.tiles,
        "threads": args.threads,
        "repeats": args.repeats,
        "median_seconds": medians,
        "inputs_per_second": {v: {a: round(args.tiles / s, 1) for a, s in m.items()} for v, m in medians.items()},
        "ratio_to_baseline": {v: {a: round(r, 3) for a, r in m.items()} for v, m in ratios.items()},
        "shipped": DEFAULT_ARCH,
        "targets": {
            "shipped_tile_ratio": {
                "target": f"<= {TARGET_RATIO}",
                "value": round(shipped, 3),
                "met": shipped <= TARGET_RATIO,
            }
        },
    }
    if not args.json_only:
        title = f"Detector designs, width {args.width}, batches of {args.tiles}, {args.threads} thread(s)"
        table = Table(title=title)
        for column in ("design", "64 px tiles / s", "ratio", "32 px inputs / s", "ratio"):
            table.add_column(column, justify="left" if column == "design" else "right")
        for arch in DETECTOR_ARCHITECTURES:
            table.add_row(
                arch + (" *" if arch == DEFAULT_ARCH else ""),
                f"{result['inputs_per_second']['tile'][arch]:.0f}", f"{ratios['tile'][arch]:.2f}x",
                f"{result['inputs_per_second']['model_input'][arch]:.0f}", f"{ratios['model_input'][arch]:.2f}x",
            )  # fmt: skip
        Console().print(table)
        print(f"* shipped (worker.research.train_detector's default); ratios to {BASELINE}, measured side by side")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
