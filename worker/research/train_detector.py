"""Train the perturbation detector for a pair of bundles; writes a bundle beside the robust one.

    python -m worker.research.train_detector --robust models/pgd-at-preact18-w0.25 \
        --standard models/standard-preact18-w0.25 --data-dir ../shared/data/cifar10-jpeg.tar.gz

The detector (``training.models``, by default ``perturbation-pair``; fully convolutional) learns "clean or
benignly changed" against "adversarial" in the two views the engine gives it (``worker.engine.native``): the 32 px model
input and 64 px tiles of the image at its own resolution.  Its examples (``worker.research.detector_data``):

- CIFAR-10 images of the TRAINING split (by default ones the models trained on, ``--pool``: the few they never
  saw are kept for ``worker.research.calibrate``, whose scores must look like the service's), each as it is, after one
  benign change (``worker.research.delivery.BENIGN``), with ``--hard-negatives`` also with sensor noise
  (``HARD_NEGATIVE``), and attacked (PGD and CW-inf at 4-16/255 against both bundles, Square at 4 and 8/255,
  L2 PGD at radius 0.5 and 1 against the standard model, and PGD, CW-inf and L2 PGD against every
  ``--attack-source``, a standard model of another family); 2/255 attacks are left out, as strong as the
  sensor noise that must not be flagged;
- the web-image set's TRAIN split (``worker.research.web_images``), each as served, benignly changed (the same way), and
  attacked through the resize or at native resolution against both bundles and every attack source;

and every one of them delivered (PNG, JPEG 70-95, WebP, a 0.75x downscale) before its views are cut, so the
detector cannot learn a compression signature for "clean".  The images it trains on are recorded (seed and
count) in the bundle, and ``worker.research.calibrate`` leaves them out.  The last ``--holdout`` of the examples
(whole images) is kept out of training and measured; the numbers land in the bundle's ``metrics``.

``--tail-weight`` adds the loss of each batch's hardest clean examples (``TailLoss``), where the service's
threshold sits; ``--init`` starts from a trained detector, to fine-tune it that way on the same examples.
``--deliveries`` narrows the deliveries, e.g. to lossless files only (``png,downscale0.75``): a detector for
images served losslessly, where a perturbation arrives intact, need not also learn what survives a JPEG.
"""

from __future__ import annotations

import argparse
import math
import random
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from torch import nn

from training import bundle as bundle_io
from training.bundle import Bundle, BundleError
from training.bundle import load as load_bundle
from training.data import load_splits, to_float
from training.models import DETECTOR_ARCHITECTURES, build_model
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine import native
from worker.engine.engine import Engine, default_detector_dir
from worker.engine.images import ImageLimits
from worker.research import delivery, web_images
from worker.research.cifar_attacks import AttackSpec, attack_all
from worker.research.detector_data import (
    EXTRA_NEGATIVES,
    HARD_NEGATIVE,
    NATURAL_ATTACKS,
    DetectorExamples,
    ViewSet,
    cifar_examples,
    natural_examples,
)
from worker.research.pools import SEEN_POOL, decode_web_images, detector_images, seen_pool, unseen_pool
from worker.research.terminal import make_progress

DEFAULT_ARCH = "perturbation-pair"  # cnn2 and residual averaged: fewer clean images in the tail (results/README.md)
METHOD = "perturbation-detector"

# What the detector learns to flag: eps 4/255 and up, PGD and CW-inf against both models, Square (black box),
# and L2 PGD at the usual CIFAR-10 radii.
TRAINING_ATTACKS: tuple[AttackSpec, ...] = (
    AttackSpec("standard", "pgd", 4),
    AttackSpec("standard", "pgd", 6),
    AttackSpec("standard", "pgd", 8),
    AttackSpec("standard", "pgd", 16),
    AttackSpec("standard", "cw", 4),
    AttackSpec("standard", "cw", 8),
    AttackSpec("robust", "pgd", 4),
    AttackSpec("robust", "pgd", 8),
    AttackSpec("robust", "pgd", 16),
    AttackSpec("standard", "square", 4),
    AttackSpec("standard", "square", 8),
    AttackSpec("standard", "l2", 0.5),
    AttackSpec("standard", "l2", 1.0),
)
# Against each extra attack source (``--attack-source``, a standard model of another family): the standard
# model's L-inf and L2 set, so that what the detector learns is a perturbation, not one family's texture.
SOURCE_ATTACKS: tuple[tuple[str, float], ...] = (("pgd", 4), ("pgd", 8), ("pgd", 16), ("cw", 4), ("cw", 8), ("l2", 1.0))


def training_attacks(sources: Sequence[str] = ()) -> tuple[AttackSpec, ...]:
    """The CIFAR-10 attack mix: ``TRAINING_ATTACKS`` on the engine's pair, then ``SOURCE_ATTACKS`` on each source."""
    extra = (AttackSpec(arch, objective, budget) for arch in sources for objective, budget in SOURCE_ATTACKS)
    return TRAINING_ATTACKS + tuple(extra)


def load_attack_sources(
    paths: Sequence[str], robust: Bundle, standard: Bundle, device: torch.device
) -> dict[str, Bundle]:
    """The ``--attack-source`` bundles by architecture; each must classify the pair's inputs into the pair's
    classes, and be neither of the pair nor a second model of an architecture already named."""
    sources: dict[str, Bundle] = {}
    for path in paths:
        source = load_bundle(path, device)
        arch = source.metadata["arch"]
        for key in ("classes", "input_size"):
            if source.metadata[key] != robust.metadata[key]:
                raise ValueError(f"attack source {path} differs from the robust bundle in {key}")
        if source.version in (robust.version, standard.version):
            raise ValueError(f"attack source {path} is one of the pair: its attacks are already in the mix")
        if arch in sources or arch in (det.ROBUST, det.STANDARD):
            raise ValueError(f"attack source {path}: a second {arch} model (name one source per architecture)")
        sources[arch] = source
    return sources


def fit(
    model: nn.Module,
    groups: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    console: Console,
    noise_fraction: float = 0.0,
    tail: TailLoss | None = None,
) -> list[float]:
    """AdamW with a one-cycle schedule and horizontal flips on examples of several sizes (uint8 views and their
    labels, one group per size; each batch comes from one group, batches interleaved at random).  Both
    classes weigh the same.  ``noise_fraction`` of each batch, clean and adversarial alike, gets fresh sensor
    noise (``add_sensor_noise``); ``tail`` adds the hardest clean examples' loss (``TailLoss``).  Returns the
    epoch losses."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    labels = torch.cat([y for _x, y in groups])
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise ValueError("the detector needs clean and adversarial examples")
    class_weight = torch.tensor([len(labels) / (2 * (len(labels) - n_pos)), len(labels) / (2 * n_pos)], device=device)
    generator = torch.Generator().manual_seed(seed)
    plan = [g for g, (x, _y) in enumerate(groups) for _ in range(len(x) // batch_size)]
    if not plan:
        raise ValueError(f"batch size {batch_size} exceeds every group of training examples")
    # AdamW rather than SGD: the faint perturbation signal is found in a few hundred steps instead of a few
    # thousand (measured on 2,000 delivered CIFAR-10 examples: training AUROC 0.92 vs 0.87 after 300 steps).
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * len(plan), pct_start=0.15)
    losses = []
    with make_progress(console) as progress:
        task = progress.add_task("training the detector", total=epochs * len(plan))
        for _epoch in range(epochs):
            model.train()
            orders = [torch.randperm(len(x), generator=generator) for x, _y in groups]
            taken = [0] * len(groups)
            total = 0.0
            for g in torch.tensor(plan)[torch.randperm(len(plan), generator=generator)].tolist():
                idx = orders[g][taken[g] : taken[g] + batch_size]
                taken[g] += batch_size
                xb = groups[g][0][idx].to(device).float().div_(255)
                yb = groups[g][1][idx].to(device)
                flip = torch.rand(len(idx), generator=generator).to(device) < 0.5
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
                if noise_fraction > 0:
                    xb = add_sensor_noise(xb, noise_fraction, generator)
                loss = detector_loss(model, xb, yb, class_weight, tail)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item()
                progress.advance(task)
            losses.append(total / len(plan))
            console.log(f"epoch {len(losses)}: loss {losses[-1]:.4f}")
    model.eval()
    return losses


def add_sensor_noise(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with sigma drawn from 1-4/255 (``delivery.noise``, the benign change nearest an attack) on
    a random ``fraction`` of the images in [0, 1], rounded to 8 bits as a saved file would be; labels stay as
    they are.  On both classes it teaches that noise is neither evidence of an attack nor its absence: the
    noisy clean images were what set the threshold, and one fixed noisy copy per image did not stop that."""
    chosen = (torch.rand(len(x), generator=generator) < fraction).to(x.device)
    low, high = (v / 255 for v in delivery.NOISE_SIGMA_255)
    sigma = torch.empty(len(x)).uniform_(low, high, generator=generator).to(x.device)
    noise = torch.randn(x.shape, generator=generator).to(x.device) * sigma.view(-1, 1, 1, 1)
    return torch.where(chosen.view(-1, 1, 1, 1), (x + noise).mul(255).round().clamp(0, 255).div(255), x)


@dataclass(frozen=True)
class TailLoss:
    """An extra term on the hardest clean examples of each batch: ``weight`` times the mean cross-entropy of
    the ``fraction`` of its clean examples that look most adversarial.

    Why: the service's threshold sits in the top 0.5% of clean and benignly changed images, so what decides
    the attacks caught is how far that tail reaches, while plain cross-entropy spends itself on the bulk of
    easy clean images (online hard-example mining, Shrivastava et al. 2016, applied to one class)."""

    weight: float
    fraction: float = 0.05

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        clean = F.cross_entropy(logits[y == 0], y[y == 0], reduction="none")
        if len(clean) == 0:
            return logits.sum() * 0.0
        hardest = clean.topk(max(1, math.ceil(self.fraction * len(clean)))).values
        return self.weight * hardest.mean()


def detector_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor, tail: TailLoss | None = None
) -> torch.Tensor:
    """Cross-entropy of the detector, plus ``tail`` if given; a design made of several detectors
    (``branch_logits``, e.g. ``perturbation-pair``) pays it per branch, so that each branch is a detector in
    its own right."""
    branches = getattr(getattr(model, "net", None), "branch_logits", None)
    every_logits = [model(x)] if branches is None else branches(model.normalise(x))
    loss = sum(F.cross_entropy(logits, y, weight=class_weight) for logits in every_logits)
    if tail is not None:
        loss = loss + sum(tail(logits, y) for logits in every_logits)
    return loss


def held_out_metrics(
    model: nn.Module, views: dict[str, tuple[torch.Tensor, torch.Tensor]], target_fpr: float
) -> dict[str, Any]:
    """Per view (model input, native tiles): AUROC and TPR at the target FPR on held-out examples."""
    metrics: dict[str, Any] = {"target_fpr": target_fpr}
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for name, (x, y) in views.items():
            if len(x) == 0 or y.min() == y.max():
                continue
            logits = native.adversarial_logit(model, x.to(device).float().div_(255)).cpu()
            clean, adversarial = logits[y == 0], logits[y == 1]
            threshold = calib.threshold_for_fpr(clean, target_fpr)
            metrics[name] = {
                "n_clean": len(clean),
                "n_adversarial": len(adversarial),
                "auroc": calib.roc_auc(clean, adversarial),
                "tpr": calib.flag_rate(adversarial, threshold),
            }
    return metrics


def source_records(sources: dict[str, Bundle]) -> list[dict[str, str]]:
    return [{"arch": arch, "version": b.version, "path": str(b.path)} for arch, b in sources.items()]


def metadata(
    robust: Bundle,
    standard: Bundle,
    sources: dict[str, Bundle],
    args: argparse.Namespace,
    counts: dict[str, Any],
    info: dict[str, Any],
) -> dict[str, Any]:
    return {
        "arch": args.arch,
        "width": args.width,
        "num_classes": len(det.DETECTOR_CLASSES),
        "classes": list(det.DETECTOR_CLASSES),
        "input_size": robust.metadata["input_size"],
        "tile": native.TILE,
        "mean": robust.metadata["mean"],
        "std": robust.metadata["std"],
        "method": METHOD,
        "dataset": info["dataset"],
        "data_source": info["source"],
        "for_bundles": {"robust": robust.version, "standard": standard.version},
        "training": {
            "kind": METHOD,
            "seed": args.seed,
            "pool_images": args.n,
            "pool_kind": args.pool,
            "pool": info["pool"],
            "web_images": info["web"],
            "examples": counts,
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "attack_steps": args.steps,
            "attacks": [s.describe() for s in training_attacks(list(sources))],
            "attack_sources": source_records(sources),
            "web_attacks": [
                f"{a.name} (L-inf, eps {a.eps_255}/255, vs {', '.join(['standard', 'robust', *sources])})"
                for a in NATURAL_ATTACKS
            ],
            "benign": ", ".join(delivery.BENIGN),
            "hard_negative": f"{HARD_NEGATIVE}, one extra clean example per image" if args.hard_negatives else None,
            "web_hard_negatives": list(args.web_hard_negatives),
            "noise_augment": args.noise_augment,
            "tail_loss": {"weight": args.tail_weight, "fraction": args.tail_fraction} if args.tail_weight else None,
            "init": info["init"],
            "deliveries": ", ".join(args.deliveries),
        },
        "command": "python -m worker.research.train_detector " + shlex.join(args.argv),
    }


def examples_recipe(
    args: argparse.Namespace, robust: Bundle, standard: Bundle, sources: dict[str, Bundle]
) -> dict[str, Any]:
    """Everything the examples depend on: a saved ``--examples`` file is reused only when this matches."""
    options = ("n", "pool", "web_n", "web_attack_n", "hard_negatives", "steps", "seed", "dataset", "data_dir")
    extra = {"web_hard_negatives": list(args.web_hard_negatives)} if args.web_hard_negatives else {}
    return {
        **{name: str(getattr(args, name)) for name in options},
        **extra,
        "bundles": [robust.version, standard.version] + [b.version for b in sources.values()],
        "attacks": [s.describe() for s in training_attacks(list(sources))] + [a.name for a in NATURAL_ATTACKS],
        "benign": list(delivery.BENIGN),
        "deliveries": list(args.deliveries),
        "web": web_images.BUILD_VERSION,
    }


def benign_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in EXTRA_NEGATIVES]
    if unknown:
        known = ", ".join(EXTRA_NEGATIVES)
        raise argparse.ArgumentTypeError(f"unknown benign kind(s) {', '.join(unknown)}; choose from {known}")
    return kinds


def delivery_names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in delivery.DELIVERIES]
    if unknown or not names:
        known = ", ".join(delivery.DELIVERIES)
        raise argparse.ArgumentTypeError(f"unknown or no deliveries {', '.join(unknown)}; choose from {known}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.research.train_detector", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--robust", required=True, help="robust model bundle folder")
    parser.add_argument("--standard", required=True, help="standard companion bundle folder")
    parser.add_argument("--data-dir", required=True, help="the data set the bundles were trained on")
    parser.add_argument("--dataset", help="data set name (default: the robust bundle's)")
    parser.add_argument("--n", type=int, default=6000, help="CIFAR pool images to use (each clean, benign, attacked)")
    parser.add_argument(
        "--pool", choices=(SEEN_POOL, "unseen"), default=SEEN_POOL,
        help="CIFAR training images the models trained on (default; the unseen ones stay for calibration), or "
        "images no model saw",
    )  # fmt: skip
    web_images.add_dir_option(parser)
    parser.add_argument("--web-n", type=int, help="use at most this many web images of its train split")
    parser.add_argument(
        "--web-attack-n", type=int, help="attack only this many of them, spread evenly (default: all); the rest "
        "give clean and benign examples only, which cost no attack"
    )  # fmt: skip
    parser.add_argument(
        "--hard-negatives", action="store_true",
        help=f"give every image one extra clean example with {HARD_NEGATIVE} (the benign change nearest an attack)",
    )  # fmt: skip
    parser.add_argument(
        "--web-hard-negatives", type=benign_kinds, default=(), metavar="KIND[,KIND]",
        help="give every web image one more clean example with each of these benign changes (e.g. brightness) "
        "or as a thumbnail (thumbnail: 24-63 px, read through the model input alone)",
    )  # fmt: skip
    parser.add_argument(
        "--deliveries", type=delivery_names, default=tuple(delivery.DELIVERIES), metavar="NAME[,NAME]",
        help="deliver every example through one of these only (default: all); e.g. png,downscale0.75 makes a "
        "detector for lossless files, where the perturbation arrives intact",
    )  # fmt: skip
    parser.add_argument(
        "--attack-source", action="append", default=[], metavar="BUNDLE",
        help="a standard model of another family whose attacks the detector also learns (repeatable; keep the "
        "evaluation's --transfer-source family out)",
    )  # fmt: skip
    parser.add_argument(
        "--noise-augment", type=float, default=0.0, metavar="FRACTION",
        help="give this fraction of every training batch, clean and adversarial alike, fresh sensor noise "
        "(sigma 1-4/255); the saved examples stay valid",
    )  # fmt: skip
    parser.add_argument(
        "--tail-weight", type=float, default=0.0, metavar="W",
        help="add W times the loss of the hardest --tail-fraction of each batch's clean examples (0: none)",
    )  # fmt: skip
    parser.add_argument("--tail-fraction", type=float, default=0.05, help="the clean examples --tail-weight takes")
    parser.add_argument(
        "--init", type=Path, metavar="BUNDLE",
        help="start from this detector bundle's weights (same --arch and --width) instead of at random",
    )  # fmt: skip
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of the examples kept out and measured")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--arch", choices=DETECTOR_ARCHITECTURES, default=DEFAULT_ARCH, help="detector design")
    parser.add_argument("--width", type=int, default=16, help="channels of the first convolutions")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps per attack")
    parser.add_argument("--target-fpr", type=float, default=calib.DEFAULT_TARGET_FPR, help="for the held-out TPR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cache-dir")
    parser.add_argument(
        "--examples", type=Path, help="keep the attacked examples in this file (read it back when it exists)"
    )
    parser.add_argument("--out", help="bundle folder (default: perturbation-detector/ in the robust bundle)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.n < 10 or not 0 < args.holdout < 1 or args.epochs < 1 or not 0 <= args.noise_augment <= 1:
        parser.error("need --n >= 10, 0 < --holdout < 1, --epochs >= 1 and 0 <= --noise-augment <= 1")
    if args.tail_weight < 0 or not 0 < args.tail_fraction <= 1:
        parser.error("need --tail-weight >= 0 and 0 < --tail-fraction <= 1")
    return args


def load_init(args: argparse.Namespace) -> Bundle | None:
    """The ``--init`` detector, checked before any example is made: a perturbation detector of the design
    being trained."""
    if args.init is None:
        return None
    start = load_bundle(args.init)
    if start.metadata.get("method") != METHOD:
        raise ValueError(f"--init {args.init} is not a perturbation detector")
    design = (start.metadata["arch"], start.metadata["width"])
    if design != (args.arch, args.width):
        raise ValueError(
            f"--init {args.init} is a {design[0]} of width {design[1]}, not {args.arch} of width {args.width}"
        )
    return start


def load_web_images(folder: Path, split: str, limit: int | None, limits: ImageLimits) -> list[Image.Image]:
    """The web-image set's ``split``, decoded as the engine decodes (at native resolution)."""
    records = web_images.load_manifest(folder, split)
    records = random.Random(0).sample(records, min(limit, len(records))) if limit else records
    return decode_web_images(folder, records, limits)


def split_holdout(views: ViewSet, fraction: float) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The last ``fraction`` of the examples (the last images added) held out."""
    x, y = views.tensors()
    n_train = len(x) - max(1, round(fraction * len(x)))
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def build_examples(
    args: argparse.Namespace,
    engine: Engine,
    sources: dict[str, Bundle],
    x: torch.Tensor,
    y: torch.Tensor,
    web: list[Image.Image],
    console: Console,
) -> tuple[ViewSet, ViewSet, dict[str, Any]]:
    """Attack, change and deliver the CIFAR-10 and web images; the model-input and tile examples."""
    examples = DetectorExamples(deliveries=args.deliveries)
    source_models = {arch: b.model for arch, b in sources.items()}
    with make_progress(console) as progress:
        adversarial, names, fooled = attack_all(
            engine, x, y, args.steps, args.batch_size, args.seed, progress,
            mix=training_attacks(list(sources)), sources=source_models,
        )  # fmt: skip
        models = [engine.standard.model, engine.robust.model, *source_models.values()]
        web_counts = natural_examples(
            examples, web, models, engine.input_size, args.seed, engine.device, progress,
            attack_n=args.web_attack_n, hard_negatives=args.hard_negatives, extra_negatives=args.web_hard_negatives,
        )  # fmt: skip
    # Square leaves the images its target already gets wrong untouched: those copies are clean, not positives.
    changed = (adversarial != x).flatten(1).any(1)
    console.print(
        f"CIFAR-10 attacks fooled their target on {fooled.float().mean():.1%}; {int((~changed).sum())} unchanged "
        "copies are not used as adversarial"
    )
    cifar = DetectorExamples(deliveries=args.deliveries)
    cifar_examples(cifar, x, adversarial, names, changed, args.seed, engine.input_size, args.hard_negatives)
    # CIFAR examples first, web ones after: the held-out tail of each view is whole images, never seen.
    small = ViewSet(cifar.model_inputs.images + examples.model_inputs.images,
                    cifar.model_inputs.labels + examples.model_inputs.labels)  # fmt: skip
    counts = {
        "model_inputs": len(small.images), "tiles": len(examples.tiles.images), "web_attacks": web_counts,
        "cifar_images": len(x), "web_images": len(web),
    }  # fmt: skip
    return small, examples.tiles, counts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    robust, standard = load_bundle(args.robust), load_bundle(args.standard)
    # An engine without detectors' calibration: only its models and device are used, for the attacks.
    engine = Engine(robust, standard, None, device=args.device, threads=args.threads, detectors=["kl_rs"])
    dataset = args.dataset or robust.metadata.get("dataset", "cifar10")
    splits = load_splits(dataset, args.data_dir, Path(args.cache_dir) if args.cache_dir else None)
    if splits.train.classes != engine.classes:
        console.print(f"[red]the data set's classes {splits.train.classes} differ from the bundle's {engine.classes}")
        return 2
    try:
        init = load_init(args)
        sources = load_attack_sources(args.attack_source, robust, standard, engine.device)
        web = load_web_images(args.web_dir, "train", args.web_n, engine.limits)
        choose_pool = seen_pool if args.pool == SEEN_POOL else unseen_pool
        pool, pool_note = choose_pool(len(splits.train), [robust, standard])
        chosen = detector_images(pool, args.seed, args.n)
    except (ValueError, BundleError, web_images.MissingImagery) as err:
        console.print(f"[red]{err}")
        return 2
    console.print(f"detector images: {args.n} of the {pool_note}; {len(web)} web images (train split)")
    x = to_float(splits.train.images[chosen])
    y = splits.train.labels[chosen]

    recipe = examples_recipe(args, robust, standard, sources)
    saved = torch.load(args.examples, weights_only=False) if args.examples and args.examples.is_file() else None
    if saved is not None and saved.get("recipe") == recipe:
        small, tiles, counts = saved["small"], saved["tiles"], saved["counts"]
        console.print(f"examples read from {args.examples}")
    else:
        if saved is not None:
            console.print(f"{args.examples} holds examples made another way (options, attacks, bundles): remaking")
        small, tiles, counts = build_examples(args, engine, sources, x, y, web, console)
        if args.examples:
            torch.save({"recipe": recipe, "small": small, "tiles": tiles, "counts": counts}, args.examples)
    (small_train, small_held), (tiles_train, tiles_held) = (split_holdout(v, args.holdout) for v in (small, tiles))
    console.print(f"examples: {counts['model_inputs']} model inputs, {counts['tiles']} native tiles")

    torch.manual_seed(args.seed)
    model = build_model(args.arch, 2, robust.metadata["mean"], robust.metadata["std"], args.width).to(engine.device)
    if init is not None:
        model.load_state_dict(init.model.state_dict())
    tail = TailLoss(args.tail_weight, args.tail_fraction) if args.tail_weight > 0 else None
    losses = fit(
        model, [small_train, tiles_train], epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        seed=args.seed, console=console, noise_fraction=args.noise_augment, tail=tail,
    )  # fmt: skip
    metrics = {
        **held_out_metrics(model, {"model_input": small_held, "tiles": tiles_held}, args.target_fpr),
        "final_loss": losses[-1],
    }
    info = {
        "dataset": dataset, "source": splits.source, "pool": pool_note,
        "web": f"{len(web)} images of the train split of {args.web_dir} ({web_images.BUILD_VERSION})",
        "init": {"path": str(args.init), "version": init.version} if init is not None else None,
    }  # fmt: skip
    out = Path(args.out) if args.out else default_detector_dir(args.robust)
    bundle_io.save(model.cpu(), {**metadata(robust, standard, sources, args, counts, info), "metrics": metrics}, out)
    for view in ("model_input", "tiles"):
        if view in metrics:
            m = metrics[view]
            console.print(
                f"held out, {view}: AUROC {m['auroc']:.4f}, TPR {m['tpr']:.3f} at {args.target_fpr:.0%} FPR "
                f"({m['n_clean']} clean, {m['n_adversarial']} adversarial)"
            )
    console.print(f"wrote {out}; recalibrate with `python -m worker.research.calibrate` (the detector changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
