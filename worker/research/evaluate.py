"""Detection on test images nothing was fitted on: CIFAR-10 and web images, attacks after delivery, benign changes.

    python -m worker.research.evaluate --robust models/pgd-at-preact18-w0.25 --standard models/standard-preact18-w0.25 \
        --transfer-source runs/vgg11-w0.25-std/best --data-dir ../shared/data/cifar10-jpeg.tar.gz --n 1000 \
        --out results

What is measured
    A seeded random subset of the CIFAR-10 TEST split, and the whole TEST split of the web-image set
    (``worker.research.web_images``: photos, stamps and rendered pages whose source images never appear in the
    training or calibration splits).  Every image is scored by the engine itself (``Engine.score_images``:
    the model input and the native-resolution tiles, then the calibration's combiner), so the numbers are
    those of the served verdicts.  Every attacked or changed image is 8-bit, as a file on the web is.

    CIFAR-10 attacks (every image attacked; success rates are reported beside detection):

    - ``pgd-E-X`` / ``cw-E-X``: L-inf PGD on the cross-entropy / on the Carlini-Wagner margin.  E is eps in
      1/255; X is the model attacked: ``s`` the engine's standard companion, ``r`` the robust model, ``t`` the
      ``--transfer-source``, a model of another family (VGG-11) that nothing in training or calibration ever
      attacked: the realistic case of an adversarial image made for some other classifier.
    - ``l2-E-X``: L2 PGD on the cross-entropy (torchattacks ``PGDL2``), E the L2 radius on [0, 1] pixels
      (0.5 is the usual CIFAR-10 budget); X as above.
    - ``square-E``: Square (black box, torchattacks) with ``--square-queries`` queries.
    - ``adaptive-E``: white box against models AND detector (PGD on ``min(margin, kappa) - lambda *
      max(combined - threshold, -kappa)`` through the differentiable detectors, on the 8-bit grid; the
      first misclassified-and-unflagged iterate is kept).  Reported beside the robust model's own AutoAttack
      error: "robust_wrong_and_unflagged" is the rate an attacker who knows everything achieves.

    Web-image attacks (``web_evaluation.WEB_ATTACKS``), against the transfer source on ``--n-web-attack`` test images:
    through the service's resize (the perturbation on the full image, the model seeing it at 32 px) and at
    native resolution (the fully convolutional model attacked on a centre crop of up to 256 px).

    Every non-adaptive attack is then DELIVERED (``--deliveries``: PNG, JPEG 90 and 75, WebP, a 0.75x
    downscale) and scored again: re-saving as a JPEG must not be a way to evade the detector.

    Per population: the flag rate at the calibrated operating point with its 95% Wilson interval; AUROC and
    TPR at 1% and 5% FPR against the clean images.  Web images as served are reported per kind, with the
    share that gets "no confident class".  Benign changes (``worker.research.delivery.BENIGN``) are applied to the
    CIFAR-10 and to the web test images.

Outputs: ``detection.json``, ``detection_roc.png`` (ROC curves of the main attacks) and
``detection_scores.png`` (combined-score histograms with the threshold) in ``--out``; tables on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.data import load_splits, seeded_subset, to_float
from worker.engine import calibration as calib
from worker.engine.engine import Engine, EngineError
from worker.research import delivery, web_images
from worker.research.cifar_evaluation import DEFAULT_ATTACKS, detector_source_families, evaluate_cifar, parse_attacks
from worker.research.detection_report import (
    DEFINITIONS,
    HISTOGRAM_ATTACKS,
    MAIN_CURVES,
    check_targets,
    json_safe,
    plot_roc,
    plot_scores,
    print_report,
)
from worker.research.pools import load_web_split
from worker.research.terminal import report_console
from worker.research.web_evaluation import evaluate_web


def bundle_info(bundle: Bundle) -> dict[str, Any]:
    return {"path": str(bundle.path), "version": bundle.version, "method": bundle.metadata.get("method"),
            "arch": bundle.metadata.get("arch"), "width": bundle.metadata.get("width")}  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.research.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--robust", required=True, help="robust model bundle folder")
    parser.add_argument("--standard", required=True, help="standard companion bundle folder")
    parser.add_argument("--transfer-source", help="a separately trained model bundle for the transfer attacks")
    parser.add_argument("--calibration", help="artefact (default: calibration.json in the robust bundle's folder)")
    parser.add_argument("--data-dir", required=True, help="the data set the bundles were trained on")
    parser.add_argument("--dataset", help="data set name (default: the robust bundle's)")
    parser.add_argument("--cache-dir")
    parser.add_argument("--n", type=int, default=1000, help="test images (a seeded subset of the test split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results", help="folder for detection.json and the PNGs")
    parser.add_argument("--attacks", default="default", help=f"comma list (default: {','.join(DEFAULT_ATTACKS)})")
    parser.add_argument("--benign", default="all", help=f"comma list of {','.join(delivery.BENIGN)}, 'all' or 'none'")
    parser.add_argument(
        "--deliveries", default="png,jpeg90,jpeg75,webp,downscale0.75",
        help=f"how attacked images are delivered before scoring (of {','.join(delivery.DELIVERIES)})",
    )  # fmt: skip
    web_images.add_dir_option(parser)
    parser.add_argument("--no-web", action="store_true", help="CIFAR-10 only (no web-image test split)")
    parser.add_argument("--n-web-attack", type=int, default=120, help="web test images attacked per attack")
    parser.add_argument("--steps", type=int, default=20, help="PGD / CW steps")
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--square-target", choices=("standard", "robust", "transfer"), default="standard")
    parser.add_argument("--adaptive-steps", type=int, default=40)
    parser.add_argument("--adaptive-lambda", type=float, default=1.0)
    parser.add_argument("--adaptive-kappa", type=float, default=1.0)
    parser.add_argument("--adaptive-target", choices=("standard", "robust", "transfer"), default="standard")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.n < 2 or args.steps < 1 or args.square_queries < 1 or args.adaptive_steps < 1 or args.batch_size < 1:
        parser.error("need --n >= 2 and positive --steps, --square-queries, --adaptive-steps, --batch-size")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = report_console()
    try:
        attacks = parse_attacks(args.attacks, args.square_target, args.adaptive_target)
    except ValueError as err:
        console.print(f"[red]{err}")
        return 2
    catalogue = delivery.BENIGN
    benign = [] if args.benign == "none" else list(catalogue) if args.benign == "all" else args.benign.split(",")
    deliveries = [d for d in args.deliveries.split(",") if d]
    unknown = [b for b in benign if b not in catalogue] + [d for d in deliveries if d not in delivery.DELIVERIES]
    if unknown:
        console.print(
            f"[red]unknown benign change(s) or deliveries {', '.join(unknown)}; choose from "
            f"{', '.join(catalogue)} and {', '.join(delivery.DELIVERIES)}"
        )
        return 2
    try:
        engine = Engine.from_bundles(args.robust, args.standard, args.calibration, device=args.device,
                                     max_batch=args.batch_size, threads=args.threads)  # fmt: skip
    except (ValueError, EngineError) as err:  # BundleError and CalibrationError are ValueErrors
        console.print(f"[red]{err}")
        return 2
    if engine.calibration is None:
        console.print(
            f"[red]no calibration for {args.robust}: run `python -m worker.research.calibrate` (or pass --calibration)"
        )
        return 2
    transfer = None
    if any(s.target == "transfer" for s in attacks):
        if not args.transfer_source:
            console.print("[red]transfer attacks need --transfer-source (or drop the -t attacks from --attacks)")
            return 2
        transfer = load_transfer(args.transfer_source, engine, console)
        if transfer is None:
            return 2
    dataset = args.dataset or engine.robust.metadata.get("dataset", "cifar10")
    splits = load_splits(dataset, args.data_dir, Path(args.cache_dir) if args.cache_dir else None)
    if splits.test.classes != engine.classes:
        console.print(f"[red]the data set's classes {splits.test.classes} differ from the bundle's {engine.classes}")
        return 2
    subset = seeded_subset(splits.test, args.n, args.seed)
    x, y = to_float(subset.images), subset.labels
    settings = {
        "steps": args.steps, "square_queries": args.square_queries, "adaptive_steps": args.adaptive_steps,
        "adaptive_lambda": args.adaptive_lambda, "adaptive_kappa": args.adaptive_kappa,
        "batch_size": args.batch_size, "seed": args.seed, "deliveries": deliveries, "web_benign": benign,
        "n_web_attack": args.n_web_attack,
    }  # fmt: skip
    console.print(f"evaluating on {len(x)} test images of {splits.source} (seed {args.seed}), "
                  f"{len(attacks)} attacks, {len(benign)} benign changes")  # fmt: skip
    started = time.perf_counter()
    report, combined = evaluate_cifar(engine, x, y, attacks, benign, settings, transfer, console)
    if not args.no_web:
        if transfer is None:
            console.print("[red]the web-image attacks need --transfer-source (the evaluation-only family)")
            return 2
        try:
            web = load_web_split(args.web_dir, "test", engine.limits)
        except web_images.MissingImagery as err:
            console.print(f"[red]{err}")
            return 2
        report["web"], web_populations = evaluate_web(engine, web, transfer.model, settings, console)
        combined.update(web_populations)
    report["targets"] = check_targets(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = [n for n in MAIN_CURVES if n in combined] or [s.name for s in attacks][:7]
    histogram = [n for n in HISTOGRAM_ATTACKS if n in combined] or [s.name for s in attacks][:3]
    plot_roc(out / "detection_roc.png", combined, curves, engine.calibration.threshold)
    plot_scores(out / "detection_scores.png", combined, histogram, engine.calibration.threshold)
    document = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m worker.research.evaluate " + " ".join(sys.argv[1:] if argv is None else argv),
        "n": len(x),
        "data": {
            "dataset": dataset,
            "source": splits.source,
            "split": "test",
            "seed": args.seed,
            "note": "a seeded subset of the test split; calibration uses only the training split",
        },
        "settings": {
            **settings,
            "square_target": args.square_target,
            "adaptive_target": args.adaptive_target,
            "attack_policy": "every image is attacked; success rates are reported beside detection",
            "quantisation": "every adversarial and benign image is rounded to the 8-bit grid",
            "device": str(engine.device),
            "threads": torch.get_num_threads(),
        },
        "models": models_record(engine, transfer),
        "calibration": calibration_record(args, engine.calibration),
        **report,
        "definitions": DEFINITIONS,
        "plots": {
            "roc": "detection_roc.png",
            "scores": "detection_scores.png",
            "roc_attacks": curves,
            "histogram_attacks": histogram,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = out / "detection.json"
    path.write_text(json.dumps(json_safe(document), indent=2) + "\n")
    print_report(console, document)
    console.print(f"wrote {path}, {out / 'detection_roc.png'}, {out / 'detection_scores.png'}")
    return 0


def load_transfer(path: str, engine: Engine, console: Console) -> Bundle | None:
    """The ``--transfer-source`` bundle, None (said why) if it cannot stand in for the engine's models; warns
    when it is no transfer at all, or of a family the detector learnt."""
    transfer = load_bundle(path, engine.device)
    for key in ("classes", "input_size"):
        if transfer.metadata[key] != engine.robust.metadata[key]:
            console.print(f"[red]the transfer source differs from the engine's bundles in {key}")
            return None
    if transfer.version in (engine.robust.version, engine.standard.version):
        console.print("[yellow]the transfer source is one of the engine's own bundles: that is not a transfer")
    if transfer.metadata["arch"] in detector_source_families(engine):
        console.print(
            f"[yellow]the detector was trained on attacks against a {transfer.metadata['arch']} model: its "
            "transfer rates do not measure an unseen family"
        )
    return transfer


def models_record(engine: Engine, transfer: Bundle | None) -> dict[str, Any]:
    return {
        "robust": bundle_info(engine.robust),
        "standard": bundle_info(engine.standard),
        "perturbation_detector": bundle_info(engine.detector) if engine.detector is not None else None,
        "transfer_source": bundle_info(transfer) if transfer is not None else None,
        "model_version": engine.model_version,
    }


def calibration_record(args: argparse.Namespace, calibration: calib.Calibration) -> dict[str, Any]:
    return {
        "path": str(args.calibration or calib.default_path(args.robust)),
        "version": calibration.version,
        "threshold": calibration.threshold,
        "target_fpr": calibration.target_fpr,
        "detectors": list(calibration.detectors),
        "detector_set": calibration.detector_set,
        "calibration_measured_fpr": calibration.measured_fpr,
    }


if __name__ == "__main__":
    sys.exit(main())
