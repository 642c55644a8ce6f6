"""Perturbation detectors side by side, per delivery, on images none of them trained on.

    .venv/bin/python scripts/compare_detectors_by_delivery.py --robust models/pgd-at-preact18-w0.25 \
        --standard models/standard-preact18-w0.25 --transfer-source runs/vgg11-w0.25-std/best \
        --detector shipped=models/pgd-at-preact18-w0.25/perturbation-detector \
        --detector lossless=runs/lossless/detector --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --out results/detector_by_delivery.json

Why: a detector trained on every delivery (PNG, JPEG 70-95, WebP, a downscale) must find what survives a
JPEG, and it reads a perturbation that arrives intact (a PNG) little better than one that did not.  One
trained on lossless deliveries only (``worker.research.train_detector --deliveries png,downscale0.75``) can read the
perturbation itself.  This measures the detectors alone (their logit, not the engine's combined score), so
that the question "would routing lossless files to a detector of their own pay?" is answered before the
engine is changed for it.

Images: CIFAR-10's calibration pool (training images no bundle trained on; every detector compared must have
been drawn from the models' own training images, so none saw them) and the web-image set's CALIBRATION
split (ordinary images, at their own size: the detector reads their tiles).  Each clean, after each benign
change, and attacked from the evaluation-only family (--transfer-source): CIFAR-10 PGD 4 and 8/255 and
CW 8/255 (10 steps), web PGD 8/255 through the resize and at native resolution; every image then delivered
as PNG and as JPEG 90.  The web images shrunk to thumbnails (24-63 px) join CIFAR-10's benign groups: the
service reads them from the 32 px input alone, against CIFAR-10's threshold.

Per detector, delivery and population (CIFAR-10 32 px; web, tiled): the threshold is the largest 99th
percentile over the benign groups (clean and each benign kind) of one half of the images, as the service's
target is 1% per kind; on the other half, each group's flagged rate and each attack's detected rate, with
Wilson 95% intervals.  AUROCs are over all images.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from training.attacks import margin_objective, pgd
from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.data import load_splits
from worker.engine import native
from worker.engine.calibration import roc_auc
from worker.engine.images import ImageLimits, to_model_input
from worker.research import delivery, web_images
from worker.research.delivery import thumbnailed, to_images
from worker.research.detection_metrics import interval
from worker.research.detector_data import HARD_NEGATIVE
from worker.research.native_attacks import NativeAttack
from worker.research.pools import SEEN_POOL, decode_web_images, unseen_pool
from worker.research.web_evaluation import web_attack_start

DELIVERIES = ("png", "jpeg90")
TARGET = 0.01  # per benign kind, the target
WEB_ATTACKS = (NativeAttack("resize", "pgd", 8), NativeAttack("native", "pgd", 8))

Images = list[Image.Image]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robust", required=True)
    parser.add_argument("--standard", required=True)
    parser.add_argument("--transfer-source", required=True, help="the evaluation-only family's standard model")
    parser.add_argument("--detector", action="append", required=True, metavar="NAME=BUNDLE")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--web-dir", type=Path, default=web_images.DEFAULT_DIR)
    parser.add_argument("--n-cifar", type=int, help="use this many of the calibration pool's images (default: all)")
    parser.add_argument("--n-web", type=int, default=400, help="web calibration images (benign groups)")
    parser.add_argument("--n-web-attack", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def cifar_sets(args: argparse.Namespace, source: Bundle, pair: list[Bundle], detectors: list[Bundle]) -> dict:
    """name -> (images, is_attack) for the calibration pool's images."""
    splits = load_splits("cifar10", args.data_dir)
    pool, _note = unseen_pool(len(splits.train), pair)
    for detector in detectors:
        if detector.metadata["training"].get("pool_kind") != SEEN_POOL:
            raise SystemExit(
                f"{detector.path} was drawn from the calibration pool; it would be measured on its own data"
            )
    pool = pool[: args.n_cifar]
    x = splits.train.images[pool].float() / 255
    y = splits.train.labels[pool]
    clean = to_images(x)
    rng = random.Random(args.seed)
    sets: dict[str, tuple[Images, bool]] = {"clean": (clean, False)}
    sets |= {f"benign {k}": ([change(im, rng) for im in clean], False) for k, change in delivery.BENIGN.items()}
    attacks: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "PGD-4": lambda a, b: pgd(source.model, a, b, 4 / 255, 1 / 255, 10),
        "PGD-8": lambda a, b: pgd(source.model, a, b, 8 / 255, 2 / 255, 10),
        "CW-8": lambda a, b: pgd(source.model, a, b, 8 / 255, 2 / 255, 10, objective=margin_objective),
    }
    for name, attack in attacks.items():
        adversarial = torch.cat([attack(x[i : i + 200], y[i : i + 200]) for i in range(0, len(x), 200)])
        sets[f"attack {name}"] = (to_images(adversarial), True)
    return sets


def web_sets(args: argparse.Namespace, source: Bundle, input_size: Sequence[int]) -> dict:
    """name -> (images, is_attack) for the web calibration split's ordinary images."""
    records = [
        r for r in web_images.load_manifest(args.web_dir, "calibration") if r.kind not in web_images.SYNTHETIC_KINDS
    ]
    chosen = random.Random(args.seed).sample(records, min(args.n_web, len(records)))
    images = decode_web_images(args.web_dir, chosen, ImageLimits())
    rng = random.Random(args.seed)
    sets: dict[str, tuple[Images, bool]] = {"clean": (images, False)}
    sets |= {f"benign {k}": ([change(im, rng) for im in images], False) for k, change in delivery.BENIGN.items()}
    subset = images[: args.n_web_attack]
    for spec in WEB_ATTACKS:
        starts = [delivery.to_array(web_attack_start(image, spec)) for image in subset]
        attacked = [delivery.from_array(spec.run(source.model, pixels, input_size, "cpu")) for pixels in starts]
        sets[f"attack {spec.name}"] = (attacked, True)
    return sets


def logits(detector: Bundle, images: Images, input_size: Sequence[int]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            chunk = images[start : start + 256]
            tiles, owner = native.native_tiles([np.asarray(im) for im in chunk])
            out.append(native.image_logits(detector.model, to_model_input(chunk, input_size), tiles, owner))
    return torch.cat(out)


def rate(hits: torch.Tensor) -> dict[str, Any]:
    low, high = interval(int(hits.sum()), len(hits))
    return {"rate": round(float(hits.float().mean()), 4), "ci95": [round(low, 4), round(high, 4)], "n": len(hits)}


def compare(scores: dict[str, tuple[torch.Tensor, bool]]) -> dict[str, Any]:
    """Threshold on the first half of every benign group, rates on the second half; AUROCs on all images."""
    benign = {k: s for k, (s, attack) in scores.items() if not attack}
    halves = {k: (s[::2], s[1::2]) for k, s in benign.items()}
    threshold = max(float(torch.quantile(fit, 1 - TARGET)) for fit, _held in halves.values())
    report: dict[str, Any] = {"threshold": round(threshold, 4), "benign": {}, "attacks": {}}
    for name, (_fit, held) in halves.items():
        report["benign"][name] = rate(held > threshold)
    for name, (s, attack) in scores.items():
        if attack:
            report["attacks"][name] = {
                "detected": rate(s[1::2] > threshold),
                "auroc_vs_clean": round(roc_auc(benign["clean"], s), 4),
                "auroc_vs_noise4": round(roc_auc(benign[f"benign {HARD_NEGATIVE}"], s), 4),
            }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(stderr=True, width=150)
    pair = [load_bundle(args.robust), load_bundle(args.standard)]
    source = load_bundle(args.transfer_source)
    detectors = {name: load_bundle(path) for name, path in (d.split("=", 1) for d in args.detector)}
    input_size = pair[0].metadata["input_size"]
    torch.manual_seed(args.seed)
    with console.status("attacking and changing the CIFAR-10 pool and the web calibration images"):
        populations = {
            "cifar": cifar_sets(args, source, pair, list(detectors.values())),
            "web": web_sets(args, source, input_size),
        }
        # icons and thumbnails (24-63 px): the service reads them from the 32 px input against CIFAR-10's threshold
        thumbnails = thumbnailed(populations["web"]["clean"][0], args.seed + 1)
        populations["cifar"]["benign web thumbnail"] = (thumbnails, False)
    report: dict[str, Any] = {"target_per_benign_kind": TARGET, "detectors": {}, "command": sys.argv}
    for name, detector in detectors.items():
        report["detectors"][name] = {
            "version": detector.version,
            "deliveries": detector.metadata["training"]["deliveries"],
        }
    for how in DELIVERIES:
        rng = random.Random(args.seed)
        for population, sets in populations.items():
            # delivered once, scored by every detector: all of them read the very same files
            deliver = delivery.DELIVERIES[how]
            delivered = {k: ([deliver(im, rng) for im in images], a) for k, (images, a) in sets.items()}
            for name, detector in detectors.items():
                scores = {k: (logits(detector, images, input_size), a) for k, (images, a) in delivered.items()}
                report["detectors"][name][f"{population} {how}"] = compare(scores)
                console.log(f"{name} {population} {how} done")
    print_table(console, report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def print_table(console: Console, report: dict[str, Any]) -> None:
    for name, result in report["detectors"].items():
        table = Table(title=f"{name} ({result['version']}; trained on {result['deliveries']})")
        for column in (
            "population, delivery",
            "worst benign kind",
            "attack",
            "detected [95% CI]",
            "AUROC vs clean / noise-4",
        ):
            table.add_column(column)
        for key, entry in result.items():
            if not isinstance(entry, dict):
                continue
            worst = max(entry["benign"].items(), key=lambda kv: kv[1]["rate"])
            for attack, a in entry["attacks"].items():
                d = a["detected"]
                table.add_row(
                    key, f"{worst[0]} {worst[1]['rate']:.1%}", attack,
                    f"{d['rate']:.1%} [{d['ci95'][0]:.1%}-{d['ci95'][1]:.1%}]",
                    f"{a['auroc_vs_clean']:.3f} / {a['auroc_vs_noise4']:.3f}",
                )  # fmt: skip
        console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
