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
  merged into its population's largest (``pool_small_groups``).
- In-domain model (``worker.engine.domain``): CIFAR-10 images against web photos and pages; its threshold
  keeps ``--keep-in-domain`` of held-out CIFAR-10 images labelled, and the rest get "no confident class".
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import random
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch import nn

from training.attacks import budget_eps, margin_objective, pgd, pgd_l2, square
from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.data import ArrayDataset, load_splits, to_float
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine import domain, native
from worker.engine.combiner import fit_combiner
from worker.engine.engine import NATIVE_DRAFT_SIZE, Engine, find_detector
from worker.engine.images import ImageLimits, decode_image
from worker.research import delivery, web_images
from worker.research.delivery import quantise
from worker.research.detector_data import NATURAL_ATTACKS, cap_size, deliver, web_attack_for

DEFAULT_HOLDOUT = 1000  # training.trainer.TrainConfig.holdout


SQUARE_QUERIES = 500  # as worker.research.evaluate and the audits' robustness check run it


@dataclass(frozen=True)
class AttackSpec:
    target: str  # "standard", "robust", or the architecture of an extra attack source (``sources`` below)
    objective: str  # "pgd" (cross-entropy), "cw" (margin), "square" (black-box, SQUARE_QUERIES queries) or "l2"
    budget: float  # L-inf eps in 1/255; for "l2" (L2 PGD on the cross-entropy) the L2 radius on [0, 1] pixels

    @property
    def name(self) -> str:
        return f"{self.objective}-{self.budget:g}-{self.target[0]}"

    @property
    def eps(self) -> float:
        return budget_eps(self.objective, self.budget)

    def describe(self, steps: int | None = None) -> str:
        if self.objective == "l2":
            budget = f"L2 pgd, eps {self.budget:g}"
        else:
            budget = f"L-inf {self.objective}, eps {self.budget:g}/255"
        return f"{self.name} ({budget} vs {self.target}" + (f", {steps} steps)" if steps else ")")

    def model(self, engine: Engine, sources: Mapping[str, nn.Module] | None = None) -> nn.Module:
        """The model attacked: one of the engine's pair, or an extra source model named by its architecture."""
        if self.target == det.ROBUST:
            return engine.robust.model
        if self.target == det.STANDARD:
            return engine.standard.model
        if sources and self.target in sources:
            return sources[self.target]
        raise ValueError(f"attack {self.name} targets {self.target!r}, which is not among the attacked models")

    def run(
        self,
        engine: Engine,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        sources: Mapping[str, nn.Module] | None = None,
    ) -> torch.Tensor:
        model = self.model(engine, sources)
        if self.objective == "square":
            return square(model, x, y, self.eps, SQUARE_QUERIES)
        if self.objective == "l2":
            return pgd_l2(model, x, y, self.eps, steps)
        objective = {"objective": margin_objective} if self.objective == "cw" else {}
        with torch.enable_grad():
            return pgd(model, x, y, self.eps, 2.5 * self.eps / steps, steps, **objective)


# Most against the standard model (what transfers to the web), a third of the L-inf ones against the robust
# model; L2 at the usual CIFAR-10 radii (0.5 is about 2.3/255 per pixel, as quiet as the sensor noise).
ATTACK_MIX: tuple[AttackSpec, ...] = (
    AttackSpec("standard", "pgd", 2),
    AttackSpec("standard", "pgd", 4),
    AttackSpec("standard", "pgd", 8),
    AttackSpec("standard", "pgd", 16),
    AttackSpec("standard", "cw", 4),
    AttackSpec("standard", "cw", 8),
    AttackSpec("robust", "pgd", 4),
    AttackSpec("robust", "pgd", 8),
    AttackSpec("robust", "pgd", 16),
    AttackSpec("standard", "l2", 0.5),
    AttackSpec("standard", "l2", 1.0),
)


def holdout_of(metadata: dict[str, Any]) -> int:
    """The --holdout a bundle was trained with (read from its recorded command; the trainer's default)."""
    match = re.search(r"--holdout[ =](\d+)", metadata.get("command", ""))
    return int(match.group(1)) if match else DEFAULT_HOLDOUT


def detector_images(pool: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """The pool images a perturbation detector trained with ``seed`` and ``n`` used (``research.train_detector``)."""
    if n > len(pool):
        raise ValueError(f"asked for {n} images but the pool holds {len(pool)}")
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]


SEEN_POOL = "models-trained"  # a detector's pool kind: images the models trained on (see seen_pool)


def seen_pool(n_train: int, bundles: Sequence[Bundle]) -> tuple[torch.Tensor, str]:
    """Indices of training images some bundle trained on.  Models trained on the whole training split leave
    only their held-out images unseen (1,000 of 50,000), and those are what the calibration needs: images
    whose model scores look like the service's.  The perturbation detector reads pixels, not model scores,
    so it can learn from images the models saw, and the two pools are disjoint by construction."""
    unseen, _note = _models_unseen_pool(n_train, bundles)
    seen = torch.ones(n_train, dtype=torch.bool)
    seen[unseen] = False
    pool = seen.nonzero().squeeze(1)
    return pool, f"{len(pool)} training images the bundles trained on"


def unseen_pool(n_train: int, bundles: Sequence[Bundle], detector: Bundle | None = None) -> tuple[torch.Tensor, str]:
    """Indices of training images no bundle trained on (as trainer.py selects them), and how they were found.

    With a perturbation detector drawn from the same pool, the images it trained on are left out too (a
    detector drawn from the models' training images, ``SEEN_POOL``, shares none with this pool).
    """
    pool, note = _models_unseen_pool(n_train, bundles)
    if detector is None:
        return pool, note
    record = detector.metadata.get("training") or {}
    if record.get("pool_kind") == SEEN_POOL:
        return pool, f"{note} (the perturbation detector trained on images the bundles saw)"
    if "seed" not in record or "pool_images" not in record:
        raise ValueError(f"{detector.path} records no training images; retrain it with worker.research.train_detector")
    used = torch.zeros(n_train, dtype=torch.bool)
    used[detector_images(pool, int(record["seed"]), int(record["pool_images"]))] = True
    keep = pool[~used[pool]]
    return keep, f"{len(keep)} training images that neither bundle nor the perturbation detector trained on"


def _models_unseen_pool(n_train: int, bundles: Sequence[Bundle]) -> tuple[torch.Tensor, str]:
    used = torch.zeros(n_train, dtype=torch.bool)
    for bundle in bundles:
        record = bundle.metadata.get("training") or {}
        if "seed" not in record or "train_images" not in record:
            return torch.arange(n_train), f"whole training split ({bundle.path} has no training record)"
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(record["seed"])))
        start = holdout_of(bundle.metadata)
        used[order[start : start + int(record["train_images"])]] = True
    pool = (~used).nonzero().squeeze(1)
    return pool, f"{len(pool)} training images that neither bundle trained on"


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def score_all(engine: Engine, x: torch.Tensor, batch: int, progress: Progress, label: str) -> dict[str, torch.Tensor]:
    task = progress.add_task(label, total=len(x))
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(x), batch):
        parts.append(engine.scores(x[start : start + batch])[1])
        progress.advance(task, len(x[start : start + batch]))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}


def attack_all(
    engine: Engine,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch: int,
    seed: int,
    progress: Progress,
    mix: Sequence[AttackSpec] = ATTACK_MIX,
    sources: Mapping[str, nn.Module] | None = None,
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Adversarial copies (8-bit), the attack name of each (round-robin over ``mix``) and whether it fooled
    its target (the engine's models, or ``sources`` by architecture)."""
    torch.manual_seed(seed)
    assignment = torch.arange(len(x)) % len(mix)
    out = torch.empty_like(x)
    fooled = torch.zeros(len(x), dtype=torch.bool)
    task = progress.add_task("attacking (train split)", total=len(x))
    for index, spec in enumerate(mix):
        chosen = (assignment == index).nonzero().squeeze(1)
        for start in range(0, len(chosen), batch):
            idx = chosen[start : start + batch]
            xs, ys = x[idx].to(engine.device), y[idx].to(engine.device)
            adv = quantise(spec.run(engine, xs, ys, steps, sources))
            model = spec.model(engine, sources)
            with torch.no_grad():
                fooled[idx] = (model(adv).argmax(1) != ys).cpu()
            out[idx] = adv.cpu()
            progress.advance(task, len(idx))
    return out, [mix[int(i)].name for i in assignment], fooled


@dataclass
class Scored:
    """What the engine computed for a set of images: robust softmax (N, K) and each detector's scores (N,)."""

    probs: torch.Tensor
    scores: dict[str, torch.Tensor]
    tiled: torch.Tensor  # (N,) bool: the image was large enough for native tiles

    def subset(self, mask: torch.Tensor) -> Scored:
        return Scored(self.probs[mask], {k: v[mask] for k, v in self.scores.items()}, self.tiled[mask])

    @staticmethod
    def concat(parts: Sequence[Scored]) -> Scored:
        return Scored(
            torch.cat([p.probs for p in parts]),
            {k: torch.cat([p.scores[k] for p in parts]) for k in parts[0].scores},
            torch.cat([p.tiled for p in parts]),
        )


def score_images(engine: Engine, images: Sequence[Image.Image], progress: Progress, label: str) -> Scored:
    """The engine's scores of decoded images as served (model input and native tiles), with a progress bar."""
    task = progress.add_task(label, total=len(images))
    parts = []
    for start in range(0, len(images), engine.max_batch):
        chunk = images[start : start + engine.max_batch]
        parts.append(Scored(*engine.score_images(chunk), native.tiled(chunk)))
        progress.advance(task, len(chunk))
    return Scored.concat(parts)


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """PIL images of a float batch (B, C, H, W) in [0, 1] (8-bit, as saved)."""
    arrays = x.mul(255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return [delivery.from_array(a) for a in arrays]


def delivered(images: Sequence[Image.Image], seed: int) -> tuple[list[Image.Image], list[str]]:
    """Each image through one delivery (the detector's training mix)."""
    rng = random.Random(seed)
    pairs = [deliver(image, rng) for image in images]
    return [image for image, _ in pairs], [name for _, name in pairs]


def every_benign_version(images: Sequence[Image.Image], seed: int) -> tuple[list[Image.Image], list[str]]:
    """Every benign change of every image, kind by kind (``len(BENIGN)`` blocks of ``len(images)``).

    A kind's flag rate is a tail (1%) that one round-robin change per image leaves too few images to see:
    about 40 web images per kind, and sigma-4/255 noise on smooth wallpapers was flagged at 8% on the test
    split while its round-robin group showed 1%."""
    rng = random.Random(seed)
    out, names = [], []
    for kind, change in delivery.BENIGN.items():
        out += [change(image, rng) for image in images]
        names += [kind] * len(images)
    return out, names


def web_attacked(
    engine: Engine, images: Sequence[Image.Image], seed: int, progress: Progress
) -> tuple[list[Image.Image], list[str]]:
    """Web images attacked (``detector_data.NATURAL_ATTACKS`` against both bundles, round-robin), delivered."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    models = [engine.standard.model, engine.robust.model]
    task = progress.add_task("attacking web images", total=len(images))
    out, names = [], []
    for i, image in enumerate(images):
        spec, model = web_attack_for(i, models)
        image = cap_size(image)
        attacked = delivery.from_array(spec.run(model, delivery.to_array(image), engine.input_size, engine.device))
        delivered_image, how = deliver(attacked, rng)
        out.append(delivered_image)
        names.append(f"{spec.name}|{how}")
        progress.advance(task)
    return out, names


# One web source in this many fits the combiner, the rest set the threshold.  A combiner of three or four
# weights needs few negatives; the threshold is a 0.3-0.5% tail of each group, and the more images the group
# holds, the less one picture's highest crop decides it (halves left 300-400 per group, web-images/3).
FIT_ONE_SOURCE_IN = 3


def fitting_sources(records: Sequence[web_images.WebImage]) -> torch.Tensor:
    """True for the images whose source fits the combiner (the rest set the threshold): no source image is in
    both."""
    return torch.tensor(
        [int(hashlib.sha256(r.source.encode()).hexdigest()[:8], 16) % FIT_ONE_SOURCE_IN == 0 for r in records]
    )


@dataclass
class CalibrationSets:
    """Everything the calibration scored, by role."""

    cifar_clean_fit: Scored
    cifar_clean_held: Scored
    cifar_benign_fit: Scored
    cifar_benign_held: Scored
    cifar_benign_names: list[str]
    cifar_adv: Scored
    cifar_adv_names: list[str]
    web_clean_fit: Scored
    web_clean_held: Scored
    web_outside_fit: torch.Tensor  # which fitting web images count as outside the classes (not stamps)
    web_benign_fit: Scored
    web_benign_held: Scored
    web_benign_names: list[str]
    web_adv: Scored
    web_adv_names: list[str]
    web_small_held: Scored  # the held-out web images as thumbnails (``delivery.thumbnail``), then delivered
    web_drawn_held: Scored  # the held-out drawn patterns as served: reported, never setting the threshold


def collect(
    engine: Engine,
    train: ArrayDataset,
    pool: torch.Tensor,
    web: Sequence[tuple[web_images.WebImage, Image.Image]],
    *,
    n_clean: int,
    n_adv: int,
    n_web_adv: int,
    seed: int,
    steps: int,
    batch: int,
    console: Console,
) -> CalibrationSets:
    if n_clean < 4 or n_adv < 2:
        raise ValueError("need at least 4 clean and 2 adversarial images")
    if n_clean + n_adv > len(pool):
        raise ValueError(f"asked for {n_clean + n_adv} images but the pool holds {len(pool)}")
    order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    clean_idx, adv_idx = order[:n_clean], order[n_clean : n_clean + n_adv]
    cifar_clean, _ = delivered(to_images(to_float(train.images[clean_idx])), seed)
    half = n_clean // 2
    records = [r for r, _image in web]
    web_images_ = [image for _r, image in web]
    fitting = fitting_sources(records)
    # Drawn patterns teach the combiner (fitting sources) but do not set the threshold: that is set on what the
    # service sees, natural images and their benign changes; their own flag rate is reported beside it.
    drawn = torch.tensor([r.kind in web_images.SYNTHETIC_KINDS for r in records], dtype=torch.bool)
    held = ~fitting & ~drawn
    with make_progress(console) as progress:
        x_adv, adv_names, _fooled = attack_all(
            engine, to_float(train.images[adv_idx]), train.labels[adv_idx], steps, batch, seed, progress
        )
        cifar_adv_images, adv_delivery = delivered(to_images(x_adv), seed + 1)
        cifar_benign, cifar_benign_names = every_benign_version(cifar_clean, seed + 2)
        web_benign, web_benign_names = every_benign_version(web_images_, seed + 3)
        web_benign_fitting = fitting.repeat(len(delivery.BENIGN))
        web_benign_held = held.repeat(len(delivery.BENIGN))
        fitting_web = [image for image, fit in zip(web_images_, fitting.tolist(), strict=True) if fit]
        web_adv, web_adv_names = web_attacked(engine, fitting_web[:n_web_adv], seed + 4, progress)
        cifar_all = score_images(engine, cifar_clean, progress, "scoring CIFAR-10 clean")
        cifar_benign_all = score_images(engine, cifar_benign, progress, "scoring CIFAR-10 benign")
        web_all = score_images(engine, web_images_, progress, "scoring web clean")
        web_benign_all = score_images(engine, web_benign, progress, "scoring web benign")
        cifar_adv = score_images(engine, cifar_adv_images, progress, "scoring CIFAR-10 attacked")
        web_adv_scored = score_images(engine, web_adv, progress, "scoring web attacked")
        held_web = [image for image, keep in zip(web_images_, held.tolist(), strict=True) if keep]
        thumbnails = delivered(thumbnailed(held_web, seed + 5), seed + 6)[0]
        web_small = score_images(engine, thumbnails, progress, "scoring web thumbnails")
    first = torch.arange(n_clean) < half
    first_benign = first.repeat(len(delivery.BENIGN))
    outside = torch.tensor([r.kind != "stamp" for r in records])
    return CalibrationSets(
        cifar_clean_fit=cifar_all.subset(first),
        cifar_clean_held=cifar_all.subset(~first),
        cifar_benign_fit=cifar_benign_all.subset(first_benign),
        cifar_benign_held=cifar_benign_all.subset(~first_benign),
        cifar_benign_names=[n for n, f in zip(cifar_benign_names, first_benign.tolist(), strict=True) if not f],
        cifar_adv=cifar_adv,
        cifar_adv_names=[f"{a}|{d}" for a, d in zip(adv_names, adv_delivery, strict=True)],
        web_clean_fit=web_all.subset(fitting),
        web_clean_held=web_all.subset(held),
        web_outside_fit=outside[fitting],
        web_benign_fit=web_benign_all.subset(web_benign_fitting),
        web_benign_held=web_benign_all.subset(web_benign_held),
        web_benign_names=[n for n, keep in zip(web_benign_names, web_benign_held.tolist(), strict=True) if keep],
        web_adv=web_adv_scored,
        web_adv_names=web_adv_names,
        web_small_held=web_small,
        web_drawn_held=web_all.subset(~fitting & drawn),
    )


def thumbnailed(images: Sequence[Image.Image], seed: int) -> list[Image.Image]:
    rng = random.Random(seed)
    return [delivery.thumbnail(image, rng) for image in images]


def threshold_groups(sets: CalibrationSets, combiner: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Held-out combiner logits that set the threshold, as (tiled, untiled) groups.

    Tiled, the images large enough for native tiles: the web images as served ("web-clean") and each benign
    kind of them ("web noise-4", ...).  Untiled: CIFAR-10 clean and each benign kind ("cifar noise-4", ...),
    the thumbnails ("web thumbnail"), and the crops that a benign change shrank under 64 px pooled in "web
    small" (one kind alone holds too few of them).  The thumbnails were in "web small" too until they were
    enough for a group of their own (1,438 in web-images/4): pooled, their own tail ran at 1.0% against a 0.4%
    target with the perturbation network alone as the combiner's input.  CIFAR-10 and web
    images are kept apart too: CIFAR-10 images rarely score high, so a group mixing them with web photos lets
    the photos' tail run at up to twice the target (measured: web noise-4 2.7% on the test split at a
    threshold whose mixed group held 1.0%)."""
    tiled: dict[str, torch.Tensor] = {}
    untiled: dict[str, torch.Tensor] = {}
    small_web: list[torch.Tensor] = []

    def add(name: str, scored: Scored, web: bool) -> None:
        logit = combiner.logit(scored.scores)
        if scored.tiled.any():
            tiled[name if web else f"{name}, tiled"] = logit[scored.tiled]
        if web:
            small_web.append(logit[~scored.tiled])
        elif not scored.tiled.all():
            untiled[name] = logit[~scored.tiled]

    add("cifar clean", sets.cifar_clean_held, web=False)
    add("web-clean", sets.web_clean_held, web=True)
    for population, scored, names in (
        ("cifar", sets.cifar_benign_held, sets.cifar_benign_names),
        ("web", sets.web_benign_held, sets.web_benign_names),
    ):
        for kind in delivery.BENIGN:
            mask = torch.tensor([n == kind for n in names], dtype=torch.bool)
            if mask.any():
                add(f"{population} {kind}", scored.subset(mask), web=population == "web")
    if len(sets.web_small_held.probs):
        untiled["web thumbnail"] = combiner.logit(sets.web_small_held.scores)  # never tiled: all under 64 px
    if sum(len(part) for part in small_web):
        untiled["web small"] = torch.cat(small_web)
    return tiled, untiled


def pool_small_groups(groups: dict[str, torch.Tensor], target_fpr: float) -> dict[str, torch.Tensor]:
    """Groups too small to show the target rate (under 1 / target images, so not one of them may lie above and
    their single highest image sets the threshold) pooled: first the small groups of one family ("cifar ...",
    "web ...") together, then what is still too small into the population's largest group.  Measured: the 192
    tiled photos that "web resize-down" leaves made one striped wallpaper's maximum the threshold at 0.5% (3.04,
    against 2.61-2.80 from every other kind); at 0.3%, the eleven CIFAR-10 groups of 300 joined into the web
    thumbnails let the thumbnails' own rate run at 0.4% (CIFAR-10 images rarely score high).  Pooled kinds
    still hide one kind's tail: CIFAR-10's, pooled at 0.3%, left noise-4 at 1.6% on the test split, so
    ``--n-clean`` should give each kind 1 / target held-out images."""
    needed = math.ceil(1 / target_fpr - 1e-9) if target_fpr > 0 else 0

    def too_small(candidates: dict[str, torch.Tensor]) -> list[str]:
        return [name for name, scores in candidates.items() if len(scores) < needed]

    families: dict[str, list[str]] = {}
    for name in too_small(groups):
        families.setdefault(name.split()[0], []).append(name)
    pooled = dict(groups)
    for members in (m for m in families.values() if len(m) > 1):
        pooled = {name: scores for name, scores in pooled.items() if name not in members}
        pooled[" + ".join(members)] = torch.cat([groups[name] for name in members])
    small = too_small(pooled)
    large = [name for name in pooled if name not in small]
    if not small or not large:
        return pooled
    largest = max(large, key=lambda name: len(pooled[name]))
    joined = {name: scores for name, scores in pooled.items() if name not in small and name != largest}
    joined[" + ".join([largest, *small])] = torch.cat([pooled[largest], *(pooled[name] for name in small)])
    return joined


def untiled_offset(tiled: dict[str, torch.Tensor], untiled: dict[str, torch.Tensor], target_fpr: float) -> float:
    """What to add to the untiled images' logits so that one threshold keeps both populations' groups at the
    target: the difference of the thresholds each population's groups would set alone (0 if one is empty)."""
    if not tiled or not untiled:
        return 0.0

    def alone(groups: dict[str, torch.Tensor]) -> float:
        return max(calib.threshold_for_fpr(g, target_fpr) for g in groups.values())

    return alone(tiled) - alone(untiled)


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
        torch.save({**asdict(sets), "recorded": recorded}, scores_out)
    return set_operating_point(
        sets, recorded, detectors=detectors, target_fpr=target_fpr, keep_in_domain=keep_in_domain
    )


def load_sets(path: Path) -> tuple[CalibrationSets, dict[str, Any]]:
    """The sets and their record (seed, steps, bundles, data) as ``run_calibration`` saved them."""
    saved = torch.load(path, weights_only=False)
    recorded = saved.pop("recorded", None)
    if recorded is None:
        raise ValueError(f"{path} holds no record of the bundles it was scored with: calibrate again with --scores")
    values = {
        f.name: Scored(**saved[f.name]) if isinstance(saved[f.name], dict) else saved[f.name]
        for f in fields(CalibrationSets)
    }
    return CalibrationSets(**values), recorded


def set_operating_point(
    sets: CalibrationSets,
    recorded: dict[str, Any],
    *,
    detectors: Sequence[str],
    target_fpr: float = calib.DEFAULT_TARGET_FPR,
    keep_in_domain: float = domain.DEFAULT_KEEP,
) -> tuple[calib.Calibration, dict[str, dict[str, float]]]:
    """Fit the combiner and the domain model on the scored sets and set the threshold."""
    missing = sorted(set(detectors) - set(sets.cifar_clean_held.scores))
    if missing:
        raise ValueError(f"the saved scores hold no {', '.join(missing)}: calibrate again, measuring them")
    seed, steps = recorded["seed"], recorded["steps"]
    half_adv = torch.arange(len(sets.cifar_adv.probs)) < len(sets.cifar_adv.probs) // 2
    # The thumbnails only set the threshold (their own population's): the combiner is fitted on images as served.
    negatives = Scored.concat([sets.cifar_clean_fit, sets.cifar_benign_fit, sets.web_clean_fit, sets.web_benign_fit])
    positives = Scored.concat([sets.cifar_adv.subset(half_adv), sets.web_adv])
    combiner = fit_combiner(negatives.scores, positives.scores, detectors, seed=seed)
    tiled_groups, untiled_groups = (pool_small_groups(g, target_fpr) for g in threshold_groups(sets, combiner))
    offset = untiled_offset(tiled_groups, untiled_groups, target_fpr)
    groups = {**tiled_groups, **{name: logit + offset for name, logit in untiled_groups.items()}}

    def calibrated(scored: Scored) -> torch.Tensor:  # what the artefact's ``combined`` will give
        return calib.with_untiled_offset(combiner.logit(scored.scores), scored.tiled, offset)

    # The clean CIFAR-10 images measured apart from the groups, unless they were too few for the target and
    # pooled (at 0.3%, 300 of them would put the threshold above their single highest score).
    clean_group = next(name for name in groups if "cifar clean" in name.split(" + "))
    combined_clean = groups[clean_group]
    operating = calib.operating_threshold(combined_clean, groups, target_fpr)

    domain_model = domain.fit_domain(
        (sets.cifar_clean_fit.probs, sets.cifar_clean_fit.scores),
        (sets.web_clean_fit.probs[sets.web_outside_fit], subset(sets.web_clean_fit.scores, sets.web_outside_fit)),
        (sets.cifar_clean_held.probs, sets.cifar_clean_held.scores),
        keep=keep_in_domain,
        seed=seed,
    )
    held_adv = sets.cifar_adv.subset(~half_adv)
    table: dict[str, dict[str, float]] = {}
    for name in [*held_adv.scores, "combined"]:

        def values(scored: Scored, name: str = name) -> torch.Tensor:
            return calibrated(scored) if name == "combined" else scored.scores[name]

        threshold = (
            operating if name == "combined" else calib.threshold_for_fpr(values(sets.cifar_clean_held), target_fpr)
        )
        table[name] = {
            "auroc_cifar": calib.roc_auc(values(sets.cifar_clean_held), values(held_adv)),
            "auroc_web": calib.roc_auc(values(sets.web_clean_held), values(sets.web_adv)),
            "tpr_cifar": calib.flag_rate(values(held_adv), threshold),
            "web_clean_flagged": calib.flag_rate(values(sets.web_clean_held), threshold),
        }
    web_outside_held = (
        domain_model.logit(sets.web_clean_held.probs, sets.web_clean_held.scores) < domain_model.threshold
    )
    evaluation = {
        "split": "held-out part of the calibration pool (CIFAR-10 training split; web-image calibration split)",
        "n_clean": len(combined_clean),
        "n_web_clean": len(sets.web_clean_held.probs),
        "auroc": {k: v["auroc_cifar"] for k, v in table.items()},
        "auroc_web_fitting_attacks": {k: v["auroc_web"] for k, v in table.items()},
        "benign_flag_rate": {k: calib.flag_rate(v, operating) for k, v in groups.items()},
        "drawn_patterns_flagged": (
            calib.flag_rate(calibrated(sets.web_drawn_held), operating) if len(sets.web_drawn_held.probs) else None
        ),
        "n_drawn_patterns": len(sets.web_drawn_held.probs),
        "web_without_confident_class": float(web_outside_held.double().mean()),
        "cifar_keeping_label": domain_model.keep,
    }
    data = {
        **recorded["data"],
        "split": "train (CIFAR-10) and calibration (web images)",
        "seed": seed,
        "n_fit_clean": len(negatives.probs),
        "n_fit_adversarial": len(positives.probs),
        "n_threshold_clean": len(combined_clean),
        "threshold_groups": {k: len(v) for k, v in groups.items()},
        "deliveries": list(delivery.DELIVERIES),
        "benign": list(delivery.BENIGN),
        "attacks": [s.describe(steps) for s in ATTACK_MIX]
        + [f"web {a.name} ({a.steps} steps)" for a in NATURAL_ATTACKS],
    }
    artefact = calib.build(
        detectors=detectors,
        detector_set=det.DETECTOR_SET,
        combiner=combiner,
        combined_clean=combined_clean,
        detector_clean={k: sets.cifar_clean_held.scores[k] for k in detectors},
        target_fpr=target_fpr,
        bundles=recorded["bundles"],
        data=data,
        evaluation=evaluation,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        combined_benign=groups,
        domain=domain_model,
        untiled_offset=offset,
    )
    return artefact, table


def subset(scores: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[mask] for k, v in scores.items()}


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
    parser.add_argument(
        "--web-dir",
        type=Path,
        default=web_images.DEFAULT_DIR,
        help="web-image set (python -m worker.research.web_images build)",

    )
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


def load_web_split(folder: Path, split: str, limits: ImageLimits) -> list[tuple[web_images.WebImage, Image.Image]]:
    """A split of the web-image set, each file decoded as the engine decodes it (native resolution)."""
    return [
        (r, decode_image((folder / r.file).read_bytes(), limits, NATIVE_DRAFT_SIZE))
        for r in web_images.load_manifest(folder, split)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    if not console.is_terminal:  # logs and pipes: wide enough for the AUROC table
        console = Console(stderr=True, width=160)
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
