"""Fit the detector combiner and the in-domain model and set the threshold; writes the calibration artefact.

    python -m worker.research.calibrate --robust models/pgd-at-preact18-w0.25 \
        --standard models/standard-preact18-w0.25 \
        --data-dir ../shared/data/cifar10-jpeg.tar.gz [--scores scores.pt]
    python -m worker.research.calibrate ... --from-scores scores.pt --target-fpr 0.004   # again on the saved scores

What the service will see is what the threshold is set on: CIFAR-10 images of the TRAINING split that
neither model nor the perturbation detector trained on (their training records say which), and the
CALIBRATION split of the web-image set (``worker.research.web_images``; the test splits are kept for
``worker.research.evaluate``).  Every image goes through a delivery (``worker.research.delivery``: PNG,
JPEG 70-95, WebP, a
0.75x downscale), so compression says nothing about the label.

- Fit (the combiner, a logistic regression on the detector scores): half of the clean CIFAR-10 images and
  every benign change of each, the web images of a third of the sources and every benign change of each, against
  attacked CIFAR-10 images (PGD and CW-inf at 2-16/255 against both bundles, L2 PGD at radius 0.5 and 1) and
  web images attacked through the resize and at native resolution.
- Threshold (``calibration.operating_threshold``): the lowest that keeps the held-out clean CIFAR-10 images,
  the web images of the other two thirds of the sources, and each kind of benign change at or below the target
  rate (drawn patterns only fit the combiner: their rate is reported, the threshold is set on natural
  images), set for two populations apart: images large enough for the detector's native tiles, and smaller
  ones (CIFAR-10, and the web images shrunk to thumbnails under 64 px), whose scores come from the 32 px model
  input alone.  The artefact stores the first population's threshold and the offset that puts the second
  one's scores on the same scale (``Calibration.combined``).  A group too small to show the target rate is
  merged into its population's largest (``operating_point.pool_small_groups``).
- In-domain model (``worker.engine.domain``): CIFAR-10 images against web photos and pages; its threshold
  keeps ``--keep-in-domain`` of held-out CIFAR-10 images labelled, and the rest get "no confident class".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from training.bundle import load as load_bundle
from training.data import ArrayDataset, load_splits
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine import domain
from worker.engine.engine import Engine, find_detector
from worker.research import web_images
from worker.research.calibration_sets import collect, load_sets, save_sets
from worker.research.operating_point import set_operating_point
from worker.research.pools import load_web_split, unseen_pool
from worker.research.terminal import report_console


def run_calibration(
    engine: Engine,
    train: ArrayDataset,
    pool: torch.Tensor,
    web: Sequence[tuple[web_images.WebImage, Image.Image]],
    *,
    n_clean: int,
    n_adv: int,
    detectors: Sequence[str],
    n_web_adv: int = 160,
    target_fpr: float = calib.DEFAULT_TARGET_FPR,
    keep_in_domain: float = domain.DEFAULT_KEEP,
    seed: int = 0,
    steps: int = 10,
    batch: int = 128,
    data_info: dict[str, Any] | None = None,
    console: Console | None = None,
    scores_out: Path | None = None,
) -> tuple[calib.Calibration, dict[str, dict[str, float]]]:
    """Score the calibration sets, then fit the combiner and the domain model and set the threshold
    (``set_operating_point``); returns the artefact and a table {detector: {column: value}} for display.
    ``scores_out``: also save every set's scores there, to set the operating point again (another target rate)
    without attacking and scoring again (``load_sets``)."""
    console = console or Console(stderr=True)
    sets = collect(
        engine, train, pool, web, n_clean=n_clean, n_adv=n_adv, n_web_adv=n_web_adv, seed=seed, steps=steps,
        batch=batch, console=console,
    )  # fmt: skip
    recorded = {
        "seed": seed,
        "steps": steps,
        "bundles": engine.bundle_versions,
        "data": {
            **(data_info or {}),
            "web": f"{len(web)} images of the calibration split of the web-image set ({web_images.BUILD_VERSION})",
        },
    }
    if scores_out is not None:
        save_sets(sets, recorded, scores_out)
    return set_operating_point(
        sets, recorded, detectors=detectors, target_fpr=target_fpr, keep_in_domain=keep_in_domain
    )


def print_report(console: Console, artefact: calib.Calibration, table: dict[str, dict[str, float]]) -> None:
    result = Table(title=f"Held-out detection; thresholds at {artefact.target_fpr:.1%} FPR on clean CIFAR-10")
    for column in ("detector", "kept", "AUROC CIFAR-10", "AUROC web", "TPR CIFAR-10", "web clean flagged"):
        result.add_column(column, justify="left" if column == "detector" else "right")
    for name, row in table.items():
        kept = "*" if name in artefact.detectors or name == "combined" else ""
        result.add_row(
            name, kept, f"{row['auroc_cifar']:.3f}", f"{row['auroc_web']:.3f}", f"{row['tpr_cifar']:.3f}",
            f"{row['web_clean_flagged']:.1%}",
        )  # fmt: skip
    console.print(result)
    evaluation = artefact.evaluation
    console.print(
        "benign flag rates (held out): " + ", ".join(f"{k} {v:.1%}" for k, v in evaluation["benign_flag_rate"].items())
    )
    if evaluation.get("drawn_patterns_flagged") is not None:
        console.print(
            f"drawn patterns (held out, not setting the threshold): {evaluation['drawn_patterns_flagged']:.1%} of "
            f"{evaluation['n_drawn_patterns']} flagged"
        )
    console.print(
        f"no confident class: {evaluation['web_without_confident_class']:.1%} of held-out web images, while "
        f"{evaluation['cifar_keeping_label']:.1%} of held-out CIFAR-10 images keep their label"
    )
    console.print(
        f"threshold {artefact.threshold:.4f}: measured FPR {artefact.measured_fpr:.2%} on {artefact.n_threshold} "
        f"clean images (95% upper bound {artefact.fpr_upper_95:.2%}); calibration version {artefact.version}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.research.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--robust", required=True, help="robust model bundle folder")
    parser.add_argument("--standard", required=True, help="standard companion bundle folder")
    parser.add_argument("--data-dir", required=True, help="the data set the bundles were trained on")
    parser.add_argument("--dataset", help="data set name (default: the robust bundle's)")
    parser.add_argument(
        "--n-clean", type=int, default=600,
        help="clean images: half fit, half set the threshold (each kind's group: give it 1 / --target-fpr images)",
    )  # fmt: skip
    parser.add_argument("--n-adv", type=int, default=400, help="adversarial images: half fit, half measure")
    parser.add_argument("--target-fpr", type=float, default=calib.DEFAULT_TARGET_FPR)
    parser.add_argument(
        "--detectors", default=",".join(det.DEFAULT_DETECTORS), help="comma-separated, kept in the artefact"
    )
    parser.add_argument("--measure", default="all", help="detectors to measure in the table: 'all' or a comma list")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps per attack")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    web_images.add_dir_option(parser)
    parser.add_argument("--n-web-adv", type=int, default=160, help="web images attacked for the fit")
    parser.add_argument(
        "--keep-in-domain", type=float, default=domain.DEFAULT_KEEP,
        help="share of in-domain images that keep their class name (the rest: no confident class)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cache-dir")
    parser.add_argument(
        "--detector", help="perturbation detector bundle (default: perturbation-detector/ in the robust bundle, if any)"
    )
    parser.add_argument("--out", help="artefact path (default: calibration.json in the robust bundle's folder)")
    parser.add_argument("--scores", type=Path, help="also save the scores of every calibration set here (torch)")
    parser.add_argument(
        "--from-scores", type=Path,
        help="set the operating point again from scores saved with --scores (another --target-fpr or "
        "--keep-in-domain), without attacking or scoring: the bundles must be the ones they were scored with",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = report_console()
    keep = [d for d in args.detectors.split(",") if d]
    measure = list(det.CATALOGUE) if args.measure == "all" else [d for d in args.measure.split(",") if d]
    measure = list(dict.fromkeys([*keep, *measure]))
    # Built without any existing calibration: this run replaces it, and must score every measured detector.
    detector = find_detector(args.robust, args.detector)
    available = {det.ROBUST, det.STANDARD} | ({det.DETECTOR} if detector is not None else set())
    needing = [d.name for d in det.resolve(keep) if not d.computable_with(available)]
    if needing:
        console.print(
            f"[red]{', '.join(needing)} need a perturbation detector: train one with `python -m "
            "worker.research.train_detector`, or leave them out of --detectors"
        )
        return 2
    measure = [d.name for d in det.resolve(measure) if d.computable_with(available)]
    engine = Engine(
        load_bundle(args.robust), load_bundle(args.standard), None, device=args.device, threads=args.threads,
        max_batch=args.batch_size, detectors=measure, detector=detector,
    )  # fmt: skip
    if args.from_scores:
        return recalibrate(args, engine, keep, console)
    dataset = args.dataset or engine.robust.metadata.get("dataset", "cifar10")
    splits = load_splits(dataset, args.data_dir, Path(args.cache_dir) if args.cache_dir else None)
    if splits.train.classes != engine.classes:
        console.print(f"[red]the data set's classes {splits.train.classes} differ from the bundle's {engine.classes}")
        return 2
    pool, pool_note = unseen_pool(len(splits.train), [engine.robust, engine.standard], engine.detector)
    console.print(f"calibration pool: {pool_note}")
    try:
        web = load_web_split(args.web_dir, "calibration", engine.limits)
        console.print(f"web images: {len(web)} of the calibration split of {args.web_dir}")
        info = {"dataset": dataset, "source": splits.source, "pool": pool_note}
        artefact, table = run_calibration(
            engine, splits.train, pool, web, n_clean=args.n_clean, n_adv=args.n_adv, detectors=keep,
            n_web_adv=args.n_web_adv, target_fpr=args.target_fpr, keep_in_domain=args.keep_in_domain,
            seed=args.seed, steps=args.steps, batch=args.batch_size, data_info=info, console=console,
            scores_out=args.scores,
        )  # fmt: skip
    except (ValueError, web_images.MissingImagery) as err:
        console.print(f"[red]{err}")
        return 2
    return write(args, artefact, table, console)


def recalibrate(args: argparse.Namespace, engine: Engine, detectors: Sequence[str], console: Console) -> int:
    """``--from-scores``: the operating point set again on saved scores, for the bundles they were scored with."""
    try:
        sets, recorded = load_sets(args.from_scores)
        if recorded["bundles"] != engine.bundle_versions:
            raise ValueError(
                f"{args.from_scores} was scored with bundles {recorded['bundles']}, not {engine.bundle_versions}"
            )
        artefact, table = set_operating_point(
            sets, recorded, detectors=detectors, target_fpr=args.target_fpr, keep_in_domain=args.keep_in_domain
        )
    except (OSError, ValueError) as err:
        console.print(f"[red]{err}")
        return 2
    return write(args, artefact, table, console)


def write(
    args: argparse.Namespace, artefact: calib.Calibration, table: dict[str, dict[str, float]], console: Console
) -> int:
    out = Path(args.out) if args.out else calib.default_path(args.robust)
    calib.save(artefact, out)
    print_report(console, artefact, table)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
