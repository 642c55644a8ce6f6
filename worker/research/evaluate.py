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

    Web-image attacks (``WEB_ATTACKS``), against the transfer source on ``--n-web-attack`` test images:
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
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from training.attacks import budget_eps, margin, margin_objective, pgd, pgd_l2, predict, square
from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.data import load_splits, seeded_subset, to_float
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine import native
from worker.engine.combiner import Combiner
from worker.engine.engine import Engine, EngineError
from worker.engine.images import to_model_input
from worker.research import delivery, web_images
from worker.research.calibrate import load_web_split, make_progress, to_images
from worker.research.delivery import quantise
from worker.research.detector_data import cap_size
from worker.research.native_attacks import NativeAttack
from worker.research.native_attacks import fooled as native_fooled

FPRS = (0.01, 0.05)
TARGETS = {  # the targets: (attack, statistic, comparison, value)
    "transfer_pgd8_tpr_at_1pct_fpr": ("pgd-8-t", "tpr_at_1pct_fpr", ">=", 0.90),
    "transfer_pgd4_tpr_at_1pct_fpr": ("pgd-4-t", "tpr_at_1pct_fpr", ">=", 0.80),
}
BENIGN_TARGET = 0.02
DEFAULT_ATTACKS = (
    *(f"pgd-{e}-{t}" for t in "srt" for e in (2, 4, 8, 16)),
    *(f"cw-8-{t}" for t in "srt"),
    *(f"l2-{e}-t" for e in ("0.5", "1")),
    "square-8",
    "adaptive-8",
)
DEFINITIONS = {
    "success_rate": "attacked model wrong on the adversarial image, among all n (its clean errors count)",
    "success_rate_on_correct": "the same among the images the attacked model classified correctly when clean",
    "robust_error / standard_error": "the engine's robust / standard model wrong on the adversarial image",
    "auroc": "combined score, adversarial (all n) against the clean test images",
    "tpr_at_Xpct_fpr": "share of adversarial images above the threshold that X% of the clean test images exceed",
    "flag_rate": "share flagged at the calibrated operating point (the artefact's threshold), as served",
    "fooled_and_unflagged": "attacked model wrong AND not flagged, among all n",
    "successful": "the detection numbers on the images whose correct prediction the attack made wrong",
    "clean.flag_rate": "the served false-positive rate measured on the clean test images",
}
MAIN_CURVES = ("pgd-4-t", "pgd-8-t", "pgd-8-s", "pgd-8-r", "cw-8-s", "square-8", "adaptive-8")
HISTOGRAM_ATTACKS = ("pgd-4-t", "pgd-8-t", "square-8", "adaptive-8")
TARGET_NAMES = {"s": "standard", "r": "robust", "t": "transfer"}


# --- metrics -------------------------------------------------------------------------------------------
def auroc(negatives: Any, positives: Any) -> float:
    """P(positive score > negative score), ties counted half (Mann-Whitney U)."""
    return calib.roc_auc(negatives, positives)


def tpr_at_fpr(negatives: Any, positives: Any, fpr: float) -> float:
    """Fraction of positives above the threshold that at most ``fpr`` of the negatives exceed."""
    return calib.flag_rate(positives, calib.threshold_for_fpr(negatives, fpr))


def roc_curve(negatives: Any, positives: Any) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct score, flagging score >= value, from (0, 0) to (1, 1).

    The trapezoid area under these points equals ``auroc`` (ties give diagonal segments, i.e. count half).
    """
    neg = np.sort(np.asarray(negatives, dtype=np.float64).reshape(-1))
    pos = np.sort(np.asarray(positives, dtype=np.float64).reshape(-1))
    values = np.unique(np.concatenate([neg, pos]))[::-1]
    fpr = 1 - np.searchsorted(neg, values, side="left") / max(len(neg), 1)
    tpr = 1 - np.searchsorted(pos, values, side="left") / max(len(pos), 1)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def trapezoid_area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def detection_stats(clean: Any, adversarial: Any, threshold: float | None) -> dict[str, float | None]:
    """AUROC, TPR at 1% and 5% FPR against the clean scores, and the flag rate at the operating point."""
    stats: dict[str, float | None] = {"auroc": auroc(clean, adversarial)}
    for fpr in FPRS:
        stats[f"tpr_at_{round(fpr * 100)}pct_fpr"] = tpr_at_fpr(clean, adversarial, fpr) if len(adversarial) else None
    stats["flag_rate"] = calib.flag_rate(adversarial, threshold) if threshold is not None else None
    return stats


# --- attacks ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackSpec:
    name: str
    kind: str  # "pgd", "cw", "l2", "square", "adaptive"
    budget: float  # L-inf eps in 1/255; for "l2" the L2 radius on [0, 1] pixels
    target: str  # "standard", "robust", "transfer"

    @property
    def eps(self) -> float:
        return budget_eps(self.kind, self.budget)

    @property
    def eps_text(self) -> str:
        return f"L2 {self.budget:g}" if self.kind == "l2" else f"{self.budget:g}/255"

    @property
    def family(self) -> str:
        if self.kind in ("square", "adaptive"):
            return "black-box" if self.kind == "square" else "adaptive"
        return "transfer" if self.target == "transfer" else f"white-box {self.target}"


def parse_attacks(text: str, square_target: str, adaptive_target: str) -> list[AttackSpec]:
    """``pgd-E-X`` / ``cw-E-X`` / ``l2-E-X`` (X in s, r, t), ``square[-E]``, ``adaptive[-E]``; 'default' for the
    full set."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["default"] or names == ["all"]:
        names = list(DEFAULT_ATTACKS)
    specs = []
    for name in names:
        if match := re.fullmatch(r"(pgd|cw|l2)-(\d+(?:\.\d+)?)-([srt])", name):
            kind, eps, tag = match.groups()
            specs.append(AttackSpec(name, kind, float(eps), TARGET_NAMES[tag]))
        elif match := re.fullmatch(r"(square|adaptive)(?:-(\d+(?:\.\d+)?))?", name):
            kind, eps = match.groups()
            eps = eps or "8"
            target = square_target if kind == "square" else adaptive_target
            specs.append(AttackSpec(f"{kind}-{eps}", kind, float(eps), target))
        else:
            raise ValueError(
                f"unknown attack {name!r}: use pgd-E-X, cw-E-X or l2-E-X (X in s, r, t), square-E, adaptive-E"
            )
    if len({s.name for s in specs}) != len(specs):
        raise ValueError("an attack is listed twice")
    return specs


def bpda_view(views: det.ViewComputer, view: str, x: torch.Tensor) -> torch.Tensor:
    """A detector view with gradients: exact where the transform is differentiable, BPDA where not."""
    if view in NON_DIFFERENTIABLE_VIEWS:
        with torch.no_grad():
            squeezed = views.transform(view, x.detach())
        return x + (squeezed - x).detach()  # forward: the real view; backward: the identity
    return views.transform(view, x)


NON_DIFFERENTIABLE_VIEWS = frozenset({"bits", "jpeg"})  # rounding and libjpeg; median, noise are exact


def differentiable_scores(engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each served detector's scores with gradients with respect to ``x`` (same values as ``Engine.scores``)."""
    compared = [d for d in engine.detectors if d.name != det.NATIVE_DETECTOR]
    needs = det.needs_of(compared)
    probs: dict[tuple[str, str], torch.Tensor] = {}
    for model_name, model in engine.views.models.items():
        views = [v for m, v in needs if m == model_name]
        if views:
            batch = torch.cat([bpda_view(engine.views, v, x) for v in views])
            out = F.softmax(model(batch).float(), dim=1).split(len(x))
            probs.update({(model_name, v): p for v, p in zip(views, out, strict=True)})
    scores = det.score(compared, probs)
    if engine.detector is not None and any(d.name == det.NATIVE_DETECTOR for d in engine.detectors):
        # Model-space inputs (CIFAR-10 size) have no native tiles: the detector reads the model input.
        scores[det.NATIVE_DETECTOR] = F.softplus(native.adversarial_logit(engine.serving[det.DETECTOR], x))
    return scores


def differentiable_combined(combiner: Combiner, scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Combiner.logit`` without leaving autograd (the served one detaches and works in float64)."""
    features = torch.stack([scores[f].float() for f in combiner.features], dim=1)
    mean = torch.tensor(combiner.mean, dtype=features.dtype, device=features.device)
    std = torch.tensor(combiner.std, dtype=features.dtype, device=features.device)
    weights = torch.tensor(combiner.weights, dtype=features.dtype, device=features.device)
    return ((torch.log1p(features.clamp_min(0)) - mean) / std) @ weights + combiner.bias


def adaptive_attack(
    engine: Engine,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    lam: float,
    kappa: float = 1.0,
) -> torch.Tensor:
    """PGD against ``model`` and the engine's detector together (see the module docstring); 8-bit output."""
    assert engine.calibration is not None
    combiner, threshold = engine.calibration.combiner, engine.calibration.threshold
    # Model-space (32 px) images have no native tiles: their served score carries the calibration's offset.
    threshold -= engine.calibration.untiled_offset
    step = max(2.5 * eps / steps, 1 / 255)
    x = x.detach()
    x_adv = quantise(torch.min(torch.max(x + torch.empty_like(x).uniform_(-eps, eps), x - eps), x + eps))
    best = x_adv.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(steps + 1):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        combined = differentiable_combined(combiner, differentiable_scores(engine, x_adv))
        with torch.no_grad():  # this iterate is on the grid, so these are the served values
            success = ~found & (logits.argmax(1) != y) & (combined <= threshold)
            best[success] = x_adv.detach()[success]
            found |= success
        if i == steps:
            break
        objective = margin(logits, y).clamp(max=kappa) - lam * (combined - threshold).clamp(min=-kappa)
        (grad,) = torch.autograd.grad(objective.sum(), x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = quantise(torch.min(torch.max(x_adv, x - eps), x + eps))
    return torch.where(found.view(-1, 1, 1, 1), best, x_adv.detach())


def describe(spec: AttackSpec, settings: dict[str, Any]) -> str:
    eps = f"eps {spec.eps_text}"
    if spec.kind == "l2":
        return f"PGD L2 cross-entropy (torchattacks PGDL2), {eps}, {settings['steps']} steps of 2.5*eps/steps"
    if spec.kind == "pgd":
        return f"PGD L-inf cross-entropy, {eps}, {settings['steps']} steps of 2.5*eps/steps, uniform start"
    if spec.kind == "cw":
        return f"PGD L-inf on the CW margin (CW-inf), {eps}, {settings['steps']} steps of 2.5*eps/steps"
    if spec.kind == "square":
        return f"Square L-inf (torchattacks, margin loss, p_init 0.8), {eps}, {settings['square_queries']} queries"
    return (
        f"adaptive PGD on min(margin, {settings['adaptive_kappa']:g}) - {settings['adaptive_lambda']:g} * "
        f"max(combined - threshold, -{settings['adaptive_kappa']:g}), {eps}, {settings['adaptive_steps']} steps "
        "on the 8-bit grid, first misclassified-and-unflagged iterate kept"
    )


# --- scoring ------------------------------------------------------------------------------------------
@dataclass
class Scored:
    combined: torch.Tensor  # (N,) float64
    detectors: dict[str, torch.Tensor]
    robust_pred: torch.Tensor
    standard_pred: torch.Tensor
    confident: torch.Tensor  # the verdict names a class (in domain)


def score_images(
    engine: Engine, images: Sequence[Image.Image], progress: Progress | None = None, label: str = ""
) -> Scored:
    """The engine's scores for decoded images as served (model input and native tiles), as the verdicts get them."""
    task = progress.add_task(label, total=len(images)) if progress else None
    parts: list[dict[str, torch.Tensor]] = []
    robust, standard, in_domain = [], [], []
    for start in range(0, len(images), engine.max_batch):
        chunk = images[start : start + engine.max_batch]
        robust_probs, scores = engine.score_images(chunk)
        parts.append(scores)
        robust.append(robust_probs.argmax(1))
        x = to_model_input(chunk, engine.input_size).to(engine.device)
        standard.append(predict(engine.standard.model, x).cpu())
        _score, confident = engine.in_domain(robust_probs, scores)
        in_domain.append(confident)
        if progress is not None:
            progress.advance(task, len(chunk))
    detectors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    combined = engine.combined(detectors, native.tiled(images))
    return Scored(combined.double(), detectors, torch.cat(robust), torch.cat(standard), torch.cat(in_domain))


def score_batches(
    engine: Engine, x: torch.Tensor, batch: int, progress: Progress | None = None, label: str = ""
) -> Scored:
    """``score_images`` of a model-space batch (32 px, on the 8-bit grid), as PNG files would serve it."""
    return score_images(engine, to_images(x), progress, label)


def deliver_all(images: Sequence[Image.Image], name: str, seed: int) -> list[Image.Image]:
    rng = random.Random(seed)
    return [delivery.DELIVERIES[name](image, rng) for image in images]


def rate_with_interval(mask: torch.Tensor) -> dict[str, Any]:
    """A rate with its 95% Wilson interval and count."""
    k, n = int(mask.sum()), len(mask)
    low, high = calib.wilson_interval(k, n)
    return {"rate": k / n if n else None, "ci95": [low, high], "k": k, "n": n}


# --- the run ------------------------------------------------------------------------------------------
def detector_source_families(engine: Engine) -> set[str]:
    """Architectures whose attacks the perturbation detector was trained on (its pair's and its extra sources')."""
    families = {engine.robust.metadata["arch"], engine.standard.metadata["arch"]}
    if engine.detector is not None:
        sources = (engine.detector.metadata.get("training") or {}).get("attack_sources") or []
        families |= {source["arch"] for source in sources}
    return families


def attacked_model(spec: AttackSpec, engine: Engine, transfer: Bundle | None) -> nn.Module:
    if spec.target == "robust":
        return engine.robust.model
    if spec.target == "standard":
        return engine.standard.model
    if transfer is None:
        raise ValueError(f"{spec.name} needs --transfer-source")
    return transfer.model


def run_attack(
    spec: AttackSpec,
    engine: Engine,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: dict[str, Any],
    progress: Progress,
) -> torch.Tensor:
    batch = settings["batch_size"]
    task = progress.add_task(f"attack {spec.name}", total=len(x))
    out = torch.empty_like(x)
    torch.manual_seed(settings["seed"])
    for start in range(0, len(x), batch):
        xs, ys = x[start : start + batch].to(engine.device), y[start : start + batch].to(engine.device)
        if spec.kind in ("pgd", "cw"):
            objective = {"objective": margin_objective} if spec.kind == "cw" else {}
            steps = settings["steps"]
            with torch.enable_grad():
                adv = pgd(model, xs, ys, spec.eps, 2.5 * spec.eps / steps, steps, **objective)
        elif spec.kind == "l2":
            adv = pgd_l2(model, xs, ys, spec.eps, settings["steps"])
        elif spec.kind == "square":
            adv = square(model, xs, ys, spec.eps, settings["square_queries"], settings["seed"])
        else:
            with torch.enable_grad():
                adv = adaptive_attack(
                    engine, model, xs, ys, spec.eps, settings["adaptive_steps"], settings["adaptive_lambda"],
                    settings["adaptive_kappa"],
                )  # fmt: skip
        out[start : start + len(xs)] = quantise(adv).cpu()
        progress.advance(task, len(xs))
    return out


def labels(model: nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Predicted labels, on the CPU, of a CPU batch run through ``model`` on ``device``."""
    return torch.cat([predict(model, x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def rate(mask: torch.Tensor) -> float | None:
    return float(mask.double().mean()) if len(mask) else None


def delivered_stats(
    engine: Engine,
    images: Sequence[Image.Image],
    clean: Scored,
    deliveries: Sequence[str],
    seed: int,
    progress: Progress,
    label: str,
) -> dict[str, Any]:
    """Per delivery: the flag rate at the operating point with its interval, and AUROC against ``clean``."""
    out: dict[str, Any] = {}
    threshold = engine.calibration.threshold
    for name in deliveries:
        scored = score_images(engine, deliver_all(images, name, seed), progress, f"{label} via {name}")
        out[name] = {
            "flagged": rate_with_interval(scored.combined > threshold),
            "auroc": auroc(clean.combined, scored.combined),
        }
    return out


def evaluate(
    engine: Engine,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[AttackSpec],
    benign: Sequence[str],
    settings: dict[str, Any],
    transfer: Bundle | None = None,
    console: Console | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The CIFAR-10 part of the report (JSON-ready) and the combined scores per population (for the plots)."""
    if engine.calibration is None:
        raise EngineError(
            "the engine has no calibration: run `python -m worker.research.calibrate` for these bundles first"
        )
    console = console or Console(stderr=True)
    threshold = engine.calibration.threshold
    batch = settings["batch_size"]
    deliveries = settings["deliveries"]
    combined_by_population: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {"attacks": {}, "benign": {}}
    with make_progress(console) as progress:
        started = time.perf_counter()
        clean = score_batches(engine, x, batch, progress, "scoring clean (test)")
        combined_by_population["clean"] = clean.combined
        false_positives = int((clean.combined > threshold).sum())
        transfer_pred = labels(transfer.model, x, batch, engine.device) if transfer is not None else None
        report["clean"] = {
            "n": len(x),
            "flag_rate": false_positives / len(x),
            "flag_rate_upper_95": calib.fpr_upper_bound(false_positives, len(x)),
            "flagged": rate_with_interval(clean.combined > threshold),
            "no_confident_class": rate_with_interval(~clean.confident),
            "robust_accuracy": rate(clean.robust_pred == y),
            "standard_accuracy": rate(clean.standard_pred == y),
            "transfer_source_accuracy": rate(transfer_pred == y) if transfer_pred is not None else None,
            "seconds": round(time.perf_counter() - started, 1),
        }

        for spec in attacks:
            started = time.perf_counter()
            model = attacked_model(spec, engine, transfer)
            x_adv = run_attack(spec, engine, model, x, y, settings, progress)
            scored = score_batches(engine, x_adv, batch, progress, f"scoring {spec.name}")
            combined_by_population[spec.name] = scored.combined
            target_pred = labels(model, x_adv, batch, engine.device)
            correct_before = labels(model, x, batch, engine.device) == y
            fooled = target_pred != y
            flagged = scored.combined > threshold
            record: dict[str, Any] = {
                "family": spec.family,
                "attack": describe(spec, settings),
                "eps": spec.eps_text,
                "target": spec.target,
                "n": len(x),
                "success_rate": rate(fooled),
                "success_rate_on_correct": rate(fooled[correct_before]),
                "robust_error": rate(scored.robust_pred != y),
                "standard_error": rate(scored.standard_pred != y),
                **detection_stats(clean.combined, scored.combined, threshold),
                "flagged": rate_with_interval(flagged),
                "fooled_and_unflagged": rate(fooled & ~flagged),
                "fooled_and_unflagged_on_correct": rate((fooled & ~flagged)[correct_before]),
                "robust_wrong_and_unflagged": rate_with_interval((scored.robust_pred != y) & ~flagged),
            }
            flipped = correct_before & fooled  # a correct prediction of the attacked model made wrong
            successful = detection_stats(clean.combined, scored.combined[flipped], threshold)
            record["successful"] = {"n": int(flipped.sum()), **successful}
            record["detectors_auroc"] = {k: auroc(clean.detectors[k], v) for k, v in scored.detectors.items()}
            if spec.kind != "adaptive":
                record["delivered"] = delivered_stats(
                    engine, to_images(x_adv), clean, deliveries, settings["seed"], progress, spec.name
                )
            if spec.kind == "square":
                record["queries"] = settings["square_queries"]
            if spec.kind == "adaptive":
                record["differentiable"] = {
                    d.name: "bpda" if any(v in NON_DIFFERENTIABLE_VIEWS for _, v in d.needs) else "exact"
                    for d in engine.detectors
                }
                record["lambda"], record["kappa"] = settings["adaptive_lambda"], settings["adaptive_kappa"]
            record["seconds"] = round(time.perf_counter() - started, 1)
            report["attacks"][spec.name] = record

        rng = random.Random(settings["seed"])
        originals = to_images(x)
        for name in benign:
            started = time.perf_counter()
            changed = [delivery.BENIGN[name](image, rng) for image in originals]
            scored = score_images(engine, changed, progress, f"benign {name}")
            combined_by_population[f"benign:{name}"] = scored.combined
            report["benign"][name] = {
                "n": len(x),
                "flag_rate": calib.flag_rate(scored.combined, threshold),
                "flagged": rate_with_interval(scored.combined > threshold),
                "auroc_vs_clean": auroc(clean.combined, scored.combined),
                "robust_label_changed": rate(scored.robust_pred != clean.robust_pred),
                "seconds": round(time.perf_counter() - started, 1),
            }
    return report, combined_by_population


WEB_ATTACKS = (
    NativeAttack("resize", "pgd", 8),
    NativeAttack("resize", "cw", 8),
    NativeAttack("resize", "pgd", 4),
    NativeAttack("native", "pgd", 8),
)
NATIVE_EVAL_SIDE = 256  # native-resolution attacks run on a centre crop this large (CPU cost)
RESIZE_EVAL_SIDE = 512  # attacks through the resize see larger images scaled down to this first (CPU cost)


def centre_crop(image: Image.Image, side: int) -> Image.Image:
    if max(image.size) <= side:
        return image
    left, top = max(0, (image.width - side) // 2), max(0, (image.height - side) // 2)
    return image.crop((left, top, left + min(side, image.width), top + min(side, image.height)))


def web_attack_start(image: Image.Image, spec: NativeAttack) -> Image.Image:
    """What a web attack of the evaluation runs on (CPU cost): a centre crop at native resolution, the image
    capped in size through the resize."""
    return centre_crop(image, NATIVE_EVAL_SIDE) if spec.route == "native" else cap_size(image, RESIZE_EVAL_SIDE)


def false_flags(records: Sequence[web_images.WebImage], combined: torch.Tensor, threshold: float) -> list[dict]:
    """The ordinary images flagged, highest score first, with their source picture: crops of one picture are
    not independent, so a reader needs to see whether the false flags are many pictures or one."""
    flagged = [(score, r) for r, score in zip(records, combined.tolist(), strict=True) if score > threshold]
    flagged.sort(key=lambda pair: pair[0], reverse=True)
    return [{"file": r.file, "source": r.source, "kind": r.kind, "score": round(score, 3)} for score, r in flagged]


def pictures_flagged(records: Sequence[web_images.WebImage], flagged: torch.Tensor) -> dict[str, Any]:
    """The source pictures with at least one crop flagged, among all pictures: the crops of one picture share
    its content, so a crop-level rate's interval is too narrow when the false flags cluster in a picture."""
    any_flagged: dict[str, bool] = {}
    for record, hit in zip(records, flagged.tolist(), strict=True):
        any_flagged[record.source] = any_flagged.get(record.source, False) or hit
    return rate_with_interval(torch.tensor(list(any_flagged.values()), dtype=torch.bool))


def evaluate_web(
    engine: Engine,
    web: Sequence[tuple[web_images.WebImage, Image.Image]],
    target: nn.Module,
    settings: dict[str, Any],
    console: Console,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The web-image part: test-split images as served, per kind; benign changes; attacks against ``target``
    (the evaluation-only family) through the resize and at native resolution, after each delivery."""
    threshold = engine.calibration.threshold
    drawn = [(r, image) for r, image in web if r.kind in web_images.SYNTHETIC_KINDS]
    ordinary = [(r, image) for r, image in web if r.kind not in web_images.SYNTHETIC_KINDS]
    records = [r for r, _ in ordinary]
    images = [image for _, image in ordinary]
    kinds = sorted({r.kind for r in records})
    populations: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {"n": len(ordinary), "clean": {}, "benign": {}, "attacks": {}, "drawn": {}}
    with make_progress(console) as progress:
        # Drawn patterns come from the generator that also made the training split's: a benign kind reported
        # apart, never among the ordinary images (nor changed or attacked, so those samples stay as before).
        if drawn:
            drawn_scores = score_images(engine, [image for _, image in drawn], progress, "scoring drawn patterns")
            for kind in sorted({r.kind for r, _ in drawn}):
                mask = torch.tensor([r.kind == kind for r, _ in drawn])
                report["drawn"][kind] = {
                    "flagged": rate_with_interval((drawn_scores.combined > threshold)[mask]),
                    "flagged_images": false_flags(
                        [r for r, _ in drawn if r.kind == kind], drawn_scores.combined[mask], threshold
                    ),
                }
        clean = score_images(engine, images, progress, "scoring web images")
        populations["web clean"] = clean.combined
        report["clean"]["all"] = {
            "flagged": rate_with_interval(clean.combined > threshold),
            "no_confident_class": rate_with_interval(~clean.confident),
            "flagged_images": false_flags(records, clean.combined, threshold),
            "pictures_flagged": pictures_flagged(records, clean.combined > threshold),
        }
        for kind in kinds:
            mask = torch.tensor([r.kind == kind for r in records])
            report["clean"][kind] = {
                "flagged": rate_with_interval((clean.combined > threshold)[mask]),
                "no_confident_class": rate_with_interval(~clean.confident[mask]),
            }
        rng = random.Random(settings["seed"])
        for name in settings["web_benign"]:
            changed = [delivery.BENIGN[name](image, rng) for image in images]
            scored = score_images(engine, changed, progress, f"web benign {name}")
            report["benign"][name] = {"flagged": rate_with_interval(scored.combined > threshold)}
        # Icons and thumbnails: too small for native tiles, so the calibration's other population.
        thumbnails = [delivery.thumbnail(image, rng) for image in images]
        scored = score_images(engine, thumbnails, progress, "web thumbnails")
        report["benign"]["thumbnail"] = {"flagged": rate_with_interval(scored.combined > threshold)}
        chosen = random.Random(settings["seed"]).sample(range(len(images)), min(settings["n_web_attack"], len(images)))
        subset = [images[i] for i in chosen]
        torch.manual_seed(settings["seed"])
        for spec in WEB_ATTACKS:
            started = time.perf_counter()
            task = progress.add_task(f"web attack {spec.name}", total=len(subset))
            sources, attacked, fooled = [], [], []
            for image in subset:
                source = web_attack_start(image, spec)
                pixels = delivery.to_array(source)
                adv = spec.run(target, pixels, engine.input_size, engine.device)
                sources.append(source)
                attacked.append(delivery.from_array(adv))
                fooled.append(native_fooled(target, pixels, adv, engine.input_size))
                progress.advance(task)
            base = score_images(engine, sources, progress, f"web {spec.name} sources (clean)")
            record = {
                "attack": f"{spec.route} L-inf {spec.objective}, eps {spec.eps_255}/255, {spec.steps} steps, vs the "
                "evaluation-only family"
                + (f" on a centre crop of <= {NATIVE_EVAL_SIDE} px" if spec.route == "native" else ""),
                "n": len(subset),
                "fooled_target": rate_with_interval(torch.tensor(fooled)),
                "delivered": delivered_stats(
                    engine, attacked, base, settings["deliveries"], settings["seed"], progress, f"web {spec.name}"
                ),  # fmt: skip
                "seconds": round(time.perf_counter() - started, 1),
            }
            populations[f"web {spec.name}"] = score_images(engine, attacked).combined
            report["attacks"][spec.name] = record
    return report, populations


def _flag_rate(record: dict[str, Any] | None, delivery_name: str) -> float | None:
    if record is None or delivery_name not in record.get("delivered", {}):
        return None
    return record["delivered"][delivery_name]["flagged"]["rate"]


def check_targets(report: dict[str, Any]) -> dict[str, Any]:
    """The web-image issue's targets, each with the value measured at the operating point."""
    cifar, web = report["attacks"], report.get("web", {})
    web_attacks = web.get("attacks", {})
    goals: dict[str, tuple[float | None, str, float]] = {
        "cifar transferred PGD-8, PNG": (_flag_rate(cifar.get("pgd-8-t"), "png"), ">=", 0.95),
        "cifar transferred CW-8, PNG": (_flag_rate(cifar.get("cw-8-t"), "png"), ">=", 0.95),
        "cifar transferred PGD-8, JPEG q90": (_flag_rate(cifar.get("pgd-8-t"), "jpeg90"), ">=", 0.90),
        "cifar transferred PGD-4, PNG": (_flag_rate(cifar.get("pgd-4-t"), "png"), ">=", 0.85),
        "web PGD-8 through the resize, PNG": (_flag_rate(web_attacks.get("resize-pgd-8"), "png"), ">=", 0.95),
        "web CW-8 through the resize, PNG": (_flag_rate(web_attacks.get("resize-cw-8"), "png"), ">=", 0.95),
        "web PGD-8 through the resize, JPEG q90": (_flag_rate(web_attacks.get("resize-pgd-8"), "jpeg90"), ">=", 0.90),
        "web PGD-4 through the resize, PNG": (_flag_rate(web_attacks.get("resize-pgd-4"), "png"), ">=", 0.85),
        "web PGD-8 at native resolution, PNG": (_flag_rate(web_attacks.get("native-pgd-8"), "png"), ">=", 0.90),
    }
    if web.get("clean"):
        goals["web images flagged (95% upper bound)"] = (web["clean"]["all"]["flagged"]["ci95"][1], "<=", 0.01)
    benign = {f"cifar {k}": v["flagged"]["rate"] for k, v in report["benign"].items()}
    benign |= {f"web {k}": v["flagged"]["rate"] for k, v in web.get("benign", {}).items()}
    benign |= {f"drawn {k}s": v["flagged"]["rate"] for k, v in web.get("drawn", {}).items()}
    if benign:
        worst = max(benign, key=lambda k: benign[k])
        goals[f"worst benign change ({worst})"] = (benign[worst], "<=", 0.01)
    targets = {}
    for name, (value, comparison, goal) in goals.items():
        met = None if value is None else (value >= goal if comparison == ">=" else value <= goal)
        targets[name] = {"target": f"{comparison} {goal}", "value": value, "met": met}
    return targets


# --- plots --------------------------------------------------------------------------------------------
def plot_roc(path: Path, combined: dict[str, torch.Tensor], names: Sequence[str], threshold: float) -> None:
    """ROC curves (linear and log FPR); a dot marks each attack's operating point (the calibrated threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    clean = combined["clean"]
    for name in names:
        fpr, tpr = roc_curve(clean, combined[name])
        label = f"{name} (AUROC {auroc(clean, combined[name]):.3f})"
        point = (calib.flag_rate(clean, threshold), calib.flag_rate(combined[name], threshold))
        for ax in axes:
            (line,) = ax.plot(fpr, tpr, label=label)
            ax.plot(*point, marker="o", markersize=4, color=line.get_color())
    for ax, scale in zip(axes, ("linear", "log"), strict=True):
        ax.set_xscale(scale)
        ax.set_xlabel("false-positive rate (clean test images)")
        ax.set_ylabel("true-positive rate")
        for fpr in FPRS:
            ax.axvline(fpr, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    axes[0].plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    axes[1].set_xlim(1 / max(len(clean), 1), 1)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title("ROC of the combined score")
    axes[1].set_title("same, log FPR (dotted: 1% and 5%; dots: operating point)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(path: Path, combined: dict[str, torch.Tensor], names: Sequence[str], threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    populations = {"clean": combined["clean"]}
    benign = [v for k, v in combined.items() if k.startswith("benign:")]
    if benign:
        populations["benign changes (all)"] = torch.cat(benign)
    populations.update({n: combined[n] for n in names})
    values = torch.cat(list(populations.values())).numpy()
    finite = values[np.isfinite(values)]
    low, high = np.percentile(finite, [0.5, 99.5]) if len(finite) else (0.0, 1.0)
    low, high = min(low, threshold) - 0.5, max(high, threshold) + 0.5
    bins = np.linspace(low, high, 60)
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for name, scores in populations.items():
        ax.hist(np.clip(scores.numpy(), low, high), bins=bins, density=True, histtype="step", linewidth=1.5,
                label=f"{name} (n={len(scores)})")  # fmt: skip
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("combined score (logit; clipped to the plotted range)")
    ax.set_ylabel("density")
    ax.set_title("Combined detector score on test images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- output -------------------------------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_report(console: Console, document: dict[str, Any]) -> None:
    calibration = document["calibration"]
    table = Table(title=f"Detection on {document['n']} test images (threshold {calibration['threshold']:.3f}, "
                        f"calibration {calibration['version']})")  # fmt: skip
    for column in ("attack", "family", "fooled", "AUROC", "TPR@1%", "TPR@5%", "flagged", "fooled+unflagged"):
        table.add_column(column, justify="left" if column in ("attack", "family") else "right")
    clean = document["clean"]
    table.add_row("clean", "-", "-", "-", "-", "-", fmt(clean["flag_rate"], ".1%"), "-")
    for name, r in document["attacks"].items():
        table.add_row(
            name, r["family"], fmt(r["success_rate"], ".1%"), fmt(r["auroc"]), fmt(r["tpr_at_1pct_fpr"]),
            fmt(r["tpr_at_5pct_fpr"]), fmt(r["flag_rate"], ".1%"), fmt(r["fooled_and_unflagged"], ".1%"),
        )  # fmt: skip
    console.print(table)
    print_deliveries(console, "CIFAR-10 attacks: flagged after delivery", document["attacks"])
    if document.get("web"):
        print_web(console, document["web"])
    if document["benign"]:
        benign = Table(title="Benign changes: flag rate at the operating point (target <= 1%)")
        for column in ("change", "flagged", "AUROC vs clean", "robust label changed"):
            benign.add_column(column, justify="left" if column == "change" else "right")
        for name, r in document["benign"].items():
            benign.add_row(
                name, fmt(r["flag_rate"], ".1%"), fmt(r["auroc_vs_clean"]), fmt(r["robust_label_changed"], ".1%")
            )
        console.print(benign)
    targets = Table(title="Targets")
    for column in ("target", "goal", "value", "met"):
        targets.add_column(column)
    for name, t in document["targets"].items():
        met = {True: "[green]yes", False: "[red]no", None: "not measured"}[t["met"]]
        targets.add_row(name, t["target"], fmt(t["value"]), met)
    console.print(targets)
    console.print(
        f"clean flag rate on the test images {clean['flag_rate']:.2%} (95% upper bound "
        f"{clean['flag_rate_upper_95']:.2%}; calibrated for {calibration['target_fpr']:.1%}); robust accuracy "
        f"{fmt(clean['robust_accuracy'], '.1%')}, standard {fmt(clean['standard_accuracy'], '.1%')}"
    )


def print_deliveries(console: Console, title: str, attacks: dict[str, Any]) -> None:
    rows = {name: r["delivered"] for name, r in attacks.items() if r.get("delivered")}
    if not rows:
        return
    names = list(next(iter(rows.values())))
    table = Table(title=title + " (operating point; 95% Wilson interval)")
    table.add_column("attack")
    for name in names:
        table.add_column(name, justify="right")
    for attack, delivered in rows.items():
        cells = [
            f"{d['flagged']['rate']:.1%} [{d['flagged']['ci95'][0]:.0%}-{d['flagged']['ci95'][1]:.0%}]"
            for d in delivered.values()
        ]
        table.add_row(attack, *cells)
    console.print(table)


def print_web(console: Console, web: dict[str, Any]) -> None:
    table = Table(title=f"Web images of the test split ({web['n']}): as served")
    for column in ("kind", "n", "flagged", "95% interval", "no confident class"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind, r in web["clean"].items():
        f = r["flagged"]
        table.add_row(kind, str(f["n"]), f"{f['rate']:.2%}", f"{f['ci95'][0]:.2%}-{f['ci95'][1]:.2%}",
                      f"{r['no_confident_class']['rate']:.1%}")  # fmt: skip
    console.print(table)
    pictures = web["clean"]["all"].get("pictures_flagged")
    if pictures:
        console.print(f"source pictures with a crop flagged: {pictures['k']} of {pictures['n']}")
    sources = Counter(f["source"] for f in web["clean"]["all"].get("flagged_images", []))
    if sources:
        by_source = ", ".join(f"{source} {count}" for source, count in sources.most_common())
        console.print(f"flagged web images by source picture: {by_source}")
    for kind, r in web.get("drawn", {}).items():
        f = r["flagged"]
        console.print(f"drawn {kind}s (a benign kind, not counted above): {f['k']} of {f['n']} flagged")
    if web["benign"]:
        console.print(
            "web benign changes flagged: "
            + ", ".join(f"{k} {v['flagged']['rate']:.1%}" for k, v in web["benign"].items())
        )
    print_deliveries(console, "Web-image attacks (evaluation-only family): flagged after delivery", web["attacks"])


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
    parser.add_argument(
        "--web-dir",
        type=Path,
        default=web_images.DEFAULT_DIR,
        help="web-image set (python -m worker.research.web_images build)",

    )
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
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=160)
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
        transfer = load_bundle(args.transfer_source, engine.device)
        for key in ("classes", "input_size"):
            if transfer.metadata[key] != engine.robust.metadata[key]:
                console.print(f"[red]the transfer source differs from the engine's bundles in {key}")
                return 2
        if transfer.version in (engine.robust.version, engine.standard.version):
            console.print("[yellow]the transfer source is one of the engine's own bundles: that is not a transfer")
        if transfer.metadata["arch"] in detector_source_families(engine):
            console.print(
                f"[yellow]the detector was trained on attacks against a {transfer.metadata['arch']} model: its "
                "transfer rates do not measure an unseen family"
            )
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
    report, combined = evaluate(engine, x, y, attacks, benign, settings, transfer, console)
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
    calibration = engine.calibration
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = [n for n in MAIN_CURVES if n in combined] or [s.name for s in attacks][:7]
    histogram = [n for n in HISTOGRAM_ATTACKS if n in combined] or [s.name for s in attacks][:3]
    plot_roc(out / "detection_roc.png", combined, curves, calibration.threshold)
    plot_scores(out / "detection_scores.png", combined, histogram, calibration.threshold)
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
        "models": {
            "robust": bundle_info(engine.robust),
            "standard": bundle_info(engine.standard),
            "perturbation_detector": bundle_info(engine.detector) if engine.detector is not None else None,
            "transfer_source": bundle_info(transfer) if transfer is not None else None,
            "model_version": engine.model_version,
        },
        "calibration": {
            "path": str(args.calibration or calib.default_path(args.robust)),
            "version": calibration.version,
            "threshold": calibration.threshold,
            "target_fpr": calibration.target_fpr,
            "detectors": list(calibration.detectors),
            "detector_set": calibration.detector_set,
            "calibration_measured_fpr": calibration.measured_fpr,
        },
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


if __name__ == "__main__":
    sys.exit(main())
