"""Throughput of the engine's full verdict against the bare robust forward, and the gain of batching.

What it measures
    One engine (robust bundle, standard companion, calibration if there is one) and one fixed set of ``B``
    images, measured side by side in one run; each repeat times every contestant once in turn (interleaved,
    so machine noise hits all alike) and the median seconds are reported as images per second:

    * ``bare``: the robust model's forward alone on the B preprocessed tensors (no_grad), the floor;
    * ``verdict``: ``engine.analyse`` on the B encoded JPEG files in one batch: decoding, preprocessing,
      the robust forward, the detectors' extra views, scores, combiner and the Verdict objects;
    * ``verdict_tensor``: ``engine.analyse_tensor`` on the preprocessed batch (inference and detection only);
    * ``one_by_one``: ``engine.analyse([image])`` for each of the B files in turn.

    Images: ``B`` images of the test split when ``--data-dir`` is given, else seeded synthetic images with
    smooth structure; either way encoded as JPEG (quality 90) at ``--image-size`` pixels (default: the
    model's input size), so decoding cost is in ``verdict`` and ``one_by_one``.

    Web sizes (``--web-sizes``, default 256, 512 and 1024 px): ``--web-batch`` JPEG files (quality 85) at each
    size, cut from the web-image set's test split (``--web-dir``) or synthetic when it is absent, measured
    the same way:

    * ``decode_resize``: what any image service does anyway: decode the file (full resolution) and resize it
      to the model's input;
    * ``verdict``: ``engine.analyse`` on the same files, which also reads native-resolution tiles.

Targets
    full verdict at most 4x the bare forward's time per image (``verdict`` / ``bare`` <= 4);
    batched at least 5x faster per image than one by one (``one_by_one`` time / ``verdict`` time >= 5);
    a 512 px verdict at most 5x its decode and resize.

Usage
    python benchmarks/engine.py [--robust models/pgd-at-preact18-w0.25] [--standard models/standard-preact18-w0.25]
        [--calibration PATH] [--batch 64] [--repeats 7] [--warmup 1] [--threads N] [--device auto]
        [--data-dir PATH] [--image-size PX] [--json-only]

The rich table goes to stdout, followed by one final JSON line (only that line with ``--json-only``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table

from training.bundle import BundleError
from worker.engine import CalibrationError, Engine, EngineError, Verdict
from worker.engine.images import decode_image, to_model_input

DEFAULT_ROBUST = "models/pgd-at-preact18-w0.25"
DEFAULT_STANDARD = "models/standard-preact18-w0.25"
TARGET_FULL_OVER_BARE = 4.0
TARGET_BATCHING_GAIN = 5.0
TARGET_WEB_512_OVER_DECODE = 5.0
SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--robust", default=DEFAULT_ROBUST, help="robust model bundle folder")
    parser.add_argument("--standard", default=DEFAULT_STANDARD, help="standard companion bundle folder")
    parser.add_argument("--calibration", help="artefact (default: calibration.json in the robust bundle's folder)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (B)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats of every contestant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repeats first")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the engine's, all usable cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", help="take the images from this data set's test split")
    parser.add_argument("--image-size", type=int, help="encoded image side in pixels (default: the model input)")
    parser.add_argument("--web-sizes", default="256,512,1024", help="JPEG sides for the web-size comparison")
    parser.add_argument("--web-batch", type=int, default=16, help="files per web size")
    parser.add_argument("--web-dir", type=Path, help="web-image set (default: worker.research.web_images.DEFAULT_DIR)")
    parser.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("need --batch >= 1, --repeats >= 1 and --warmup >= 0")
    return args


def synthetic_images(n: int, size: int, seed: int = SEED) -> np.ndarray:
    """(n, size, size, 3) uint8: smooth random colour fields plus a little grain, like a small photo."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    grain = torch.randn(n, 3, size, size, generator=generator) * 0.04
    pixels = (smooth + grain).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def test_images(data_dir: str, n: int, dataset: str) -> np.ndarray:
    from training.data import load_splits, seeded_subset

    subset = seeded_subset(load_splits(dataset, data_dir).test, n, SEED)
    return subset.images.permute(0, 2, 3, 1).numpy()


def encode(pixels: np.ndarray, size: int) -> list[bytes]:
    out = []
    for array in pixels:
        image = Image.fromarray(array.squeeze(2) if array.shape[2] == 1 else array)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def web_files(size: int, n: int, web_dir: Path | None) -> tuple[list[bytes], str]:
    """``n`` JPEG files (quality 85) of ``size`` px on the longest side, from the web-image test split (the
    largest pictures, centre-cropped or scaled), or synthetic when the set is not built."""
    from worker.research import web_images

    folder = web_dir or web_images.DEFAULT_DIR
    try:
        records = sorted(web_images.load_manifest(folder, "test"), key=lambda r: -r.width * r.height)[:n]
    except web_images.MissingImagery:
        records = []
    images: list[Image.Image] = []
    for record in records:
        with Image.open(folder / record.file) as image:
            image = image.convert("RGB")
            images.append(image.resize((size, round(size * image.height / image.width)), Image.Resampling.LANCZOS))
    source = f"web-image test split ({folder})" if images else "synthetic"
    images += [Image.fromarray(a) for a in synthetic_images(n - len(images), size, SEED + size)]
    files = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        files.append(buffer.getvalue())
    return files, source


def web_sizes(engine: Engine, args: argparse.Namespace) -> list[dict[str, object]]:
    """Per size: decode-and-resize against the full verdict, interleaved, median of the repeats."""
    rows = []
    for size in (int(v) for v in args.web_sizes.split(",") if v):
        files, source = web_files(size, args.web_batch, args.web_dir)

        def decode_resize(files: list[bytes] = files) -> None:
            for data in files:
                to_model_input([decode_image(data, engine.limits)], engine.input_size)

        def verdict(files: list[bytes] = files) -> None:
            assert all(isinstance(r, Verdict) for r in engine.analyse(files))

        times: dict[str, list[float]] = {"decode_resize": [], "verdict": []}
        for repeat in range(args.warmup + args.repeats):
            for name, run in (("decode_resize", decode_resize), ("verdict", verdict)):
                start = time.perf_counter()
                run()
                if repeat >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        median = {name: statistics.median(values) for name, values in times.items()}
        rows.append({
            "size": size, "images": source, "n": len(files),
            "decode_resize_per_s": round(len(files) / median["decode_resize"], 2),
            "verdicts_per_s": round(len(files) / median["verdict"], 2),
            "verdict_over_decode": round(median["verdict"] / median["decode_resize"], 3),
        })  # fmt: skip
    return rows


def build_engine(args: argparse.Namespace, console: Console) -> Engine | None:
    for role, path in (("robust", args.robust), ("standard", args.standard)):
        if not (Path(path) / "bundle.json").is_file():
            console.print(f"[red]no {role} bundle at {path}; pass --{role} DIR (e.g. runs/cpu-otjr/best)")
            return None
    try:
        return Engine.from_bundles(
            args.robust, args.standard, args.calibration, device=args.device, max_batch=args.batch,
            threads=args.threads,
        )  # fmt: skip
    except (BundleError, CalibrationError, EngineError) as err:
        console.print(f"[red]{err}")
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(quiet=args.json_only, width=None if sys.stdout.isatty() else 120)
    engine = build_engine(args, console)
    if engine is None:
        return 2
    channels, height, width = engine.input_size
    size = args.image_size or max(height, width)
    dataset = engine.robust.metadata.get("dataset", "cifar10")
    pixels = test_images(args.data_dir, args.batch, dataset) if args.data_dir else synthetic_images(args.batch, size)
    if len(pixels) < args.batch:
        console.print(f"[red]only {len(pixels)} images available for a batch of {args.batch}")
        return 2
    files = encode(pixels, size)
    # The bare forward's input: exactly what the engine feeds its model for these files.
    decoded = [decode_image(f, engine.limits, engine.draft_size) for f in files]
    x = torch.cat([to_model_input([image], engine.input_size) for image in decoded]).to(engine.device)
    model = engine.robust.model

    def bare() -> None:
        with torch.no_grad():
            model(x)
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)

    def verdict() -> None:
        results = engine.analyse(files)
        assert all(isinstance(r, Verdict) for r in results)

    def verdict_tensor() -> None:
        engine.analyse_tensor(x)

    def one_by_one() -> None:
        for item in files:
            engine.analyse([item])

    contestants: dict[str, Callable[[], None]] = {
        "bare": bare,
        "verdict": verdict,
        "verdict_tensor": verdict_tensor,
        "one_by_one": one_by_one,
    }
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for repeat in range(args.warmup + args.repeats):
        for name, run in contestants.items():
            start = time.perf_counter()
            run()
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    per_second = {name: args.batch / seconds for name, seconds in median.items()}
    full_over_bare = median["verdict"] / median["bare"]
    tensor_over_bare = median["verdict_tensor"] / median["bare"]
    batching_gain = median["one_by_one"] / median["verdict"]

    table = Table(title=f"Engine throughput, batch {args.batch}, {engine.device}, {torch.get_num_threads()} threads")
    for column in ("contestant", "median s / batch", "images/s", "x bare time"):
        table.add_column(column, justify="left" if column == "contestant" else "right")
    for name in contestants:
        table.add_row(name, f"{median[name]:.4f}", f"{per_second[name]:.1f}", f"{median[name] / median['bare']:.2f}")
    console.print(table)
    verdict_ok = full_over_bare <= TARGET_FULL_OVER_BARE
    batching_ok = batching_gain >= TARGET_BATCHING_GAIN
    console.print(
        f"full verdict / bare forward: {full_over_bare:.2f}x (target <= {TARGET_FULL_OVER_BARE:g}x) "
        + ("[green]met" if verdict_ok else "[red]not met")
    )
    console.print(f"inference + detection only / bare forward: {tensor_over_bare:.2f}x")
    console.print(
        f"batching gain per image: {batching_gain:.2f}x (target >= {TARGET_BATCHING_GAIN:g}x) "
        + ("[green]met" if batching_ok else "[red]not met")
    )
    sizes = web_sizes(engine, args) if args.web_sizes else []
    if sizes:
        web_table = Table(title=f"Web-sized JPEGs ({args.web_batch} per size): verdicts beside decoding them")
        for column in ("size px", "images", "decode+resize /s", "verdicts /s", "verdict / decode"):
            web_table.add_column(column, justify="left" if column == "images" else "right")
        for row in sizes:
            web_table.add_row(str(row["size"]), str(row["images"]), str(row["decode_resize_per_s"]),
                              str(row["verdicts_per_s"]), f"{row['verdict_over_decode']:.2f}x")  # fmt: skip
        console.print(web_table)
    at_512 = next((r["verdict_over_decode"] for r in sizes if r["size"] == 512), None)
    summary = {
        "benchmark": "engine",
        "batch": args.batch,
        "repeats": args.repeats,
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "images": f"test split of {args.data_dir}" if args.data_dir else "synthetic",
        "image_size": size,
        "robust": engine.robust.version,
        "standard": engine.standard.version,
        "calibration": engine.calibration.version if engine.calibration else None,
        "detectors": [d.name for d in engine.detectors],
        "median_seconds": {k: round(v, 6) for k, v in median.items()},
        "images_per_second": {k: round(v, 2) for k, v in per_second.items()},
        "full_over_bare": round(full_over_bare, 3),
        "tensor_over_bare": round(tensor_over_bare, 3),
        "batching_gain": round(batching_gain, 3),
        "targets": {
            "full_over_bare": {"target": f"<= {TARGET_FULL_OVER_BARE}", "met": verdict_ok},
            "batching_gain": {"target": f">= {TARGET_BATCHING_GAIN}", "met": batching_ok},
            "web_512_over_decode": {
                "target": f"<= {TARGET_WEB_512_OVER_DECODE}",
                "met": None if at_512 is None else at_512 <= TARGET_WEB_512_OVER_DECODE,
            },
        },
        "web_sizes": sizes,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
