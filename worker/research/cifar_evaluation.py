"""The CIFAR-10 part of the evaluation: a seeded subset of the TEST split, every image attacked by each attack
named on the command line (``parse_attacks``), then delivered and scored again; benign changes of the same
images.  See ``worker.research.evaluate`` for what each attack is and what is measured."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from training.attacks import predict
from training.bundle import Bundle
from worker.engine import calibration as calib
from worker.engine.engine import Engine, EngineError
from worker.research import delivery
from worker.research.adaptive_attack import NON_DIFFERENTIABLE_VIEWS, adaptive_attack
from worker.research.cifar_attacks import AttackSpec
from worker.research.delivery import quantise, to_images
from worker.research.detection_metrics import auroc, detection_stats, rate, rate_with_interval
from worker.research.scoring import Served, delivered_stats, serve
from worker.research.terminal import make_progress

DEFAULT_ATTACKS = (
    *(f"pgd-{e}-{t}" for t in "srt" for e in (2, 4, 8, 16)),
    *(f"cw-8-{t}" for t in "srt"),
    *(f"l2-{e}-t" for e in ("0.5", "1")),
    "square-8",
    "adaptive-8",
)
TARGET_NAMES = {"s": "standard", "r": "robust", "t": "transfer"}


def parse_attacks(text: str, square_target: str, adaptive_target: str) -> list[AttackSpec]:
    """``pgd-E-X`` / ``cw-E-X`` / ``l2-E-X`` (X in s, r, t), ``square[-E]``, ``adaptive[-E]``; 'default' for the
    full set.  Each keeps the name it was given."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["default"] or names == ["all"]:
        names = list(DEFAULT_ATTACKS)
    specs = []
    for name in names:
        if match := re.fullmatch(r"(pgd|cw|l2)-(\d+(?:\.\d+)?)-([srt])", name):
            objective, eps, tag = match.groups()
            specs.append(AttackSpec(TARGET_NAMES[tag], objective, float(eps), label=name))
        elif match := re.fullmatch(r"(square|adaptive)(?:-(\d+(?:\.\d+)?))?", name):
            objective, eps = match.groups()
            eps = eps or "8"
            target = square_target if objective == "square" else adaptive_target
            specs.append(AttackSpec(target, objective, float(eps), label=f"{objective}-{eps}"))
        else:
            raise ValueError(
                f"unknown attack {name!r}: use pgd-E-X, cw-E-X or l2-E-X (X in s, r, t), square-E, adaptive-E"
            )
    if len({s.name for s in specs}) != len(specs):
        raise ValueError("an attack is listed twice")
    return specs


def describe_method(spec: AttackSpec, settings: dict[str, Any]) -> str:
    """The attack as the report states it, with the settings it ran with."""
    eps = f"eps {spec.eps_text}"
    if spec.objective == "l2":
        return f"PGD L2 cross-entropy (torchattacks PGDL2), {eps}, {settings['steps']} steps of 2.5*eps/steps"
    if spec.objective == "pgd":
        return f"PGD L-inf cross-entropy, {eps}, {settings['steps']} steps of 2.5*eps/steps, uniform start"
    if spec.objective == "cw":
        return f"PGD L-inf on the CW margin (CW-inf), {eps}, {settings['steps']} steps of 2.5*eps/steps"
    if spec.objective == "square":
        return f"Square L-inf (torchattacks, margin loss, p_init 0.8), {eps}, {settings['square_queries']} queries"
    return (
        f"adaptive PGD on min(margin, {settings['adaptive_kappa']:g}) - {settings['adaptive_lambda']:g} * "
        f"max(combined - threshold, -{settings['adaptive_kappa']:g}), {eps}, {settings['adaptive_steps']} steps "
        "on the 8-bit grid, first misclassified-and-unflagged iterate kept"
    )


def detector_source_families(engine: Engine) -> set[str]:
    """Architectures whose attacks the perturbation detector was trained on (its pair's and its extra sources')."""
    families = {engine.robust.metadata["arch"], engine.standard.metadata["arch"]}
    if engine.detector is not None:
        sources = (engine.detector.metadata.get("training") or {}).get("attack_sources") or []
        families |= {source["arch"] for source in sources}
    return families


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
        if spec.objective == "adaptive":
            with torch.enable_grad():
                adv = adaptive_attack(
                    engine, model, xs, ys, spec.eps, settings["adaptive_steps"], settings["adaptive_lambda"],
                    settings["adaptive_kappa"],
                )  # fmt: skip
        else:
            adv = spec.run(model, xs, ys, settings["steps"], queries=settings["square_queries"], seed=settings["seed"])
        out[start : start + len(xs)] = quantise(adv).cpu()
        progress.advance(task, len(xs))
    return out


def labels(model: nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Predicted labels, on the CPU, of a CPU batch run through ``model`` on ``device``."""
    return torch.cat([predict(model, x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def evaluate_cifar(
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
    sources = {"transfer": transfer.model} if transfer is not None else None
    populations: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {"attacks": {}, "benign": {}}
    with make_progress(console) as progress:
        started = time.perf_counter()
        clean = serve(engine, to_images(x), progress, "scoring clean (test)")
        populations["clean"] = clean.combined
        report["clean"] = clean_record(engine, clean, x, y, settings, transfer, started)
        for spec in attacks:
            started = time.perf_counter()
            model = spec.model(engine, sources)
            x_adv = run_attack(spec, engine, model, x, y, settings, progress)
            scored = serve(engine, to_images(x_adv), progress, f"scoring {spec.name}")
            populations[spec.name] = scored.combined
            record = attack_record(engine, spec, model, clean, scored, x, x_adv, y, settings, progress)
            record["seconds"] = round(time.perf_counter() - started, 1)
            report["attacks"][spec.name] = record
        rng = random.Random(settings["seed"])
        originals = to_images(x)
        for name in benign:
            started = time.perf_counter()
            changed = [delivery.BENIGN[name](image, rng) for image in originals]
            scored = serve(engine, changed, progress, f"benign {name}")
            populations[f"benign:{name}"] = scored.combined
            report["benign"][name] = benign_record(engine, clean, scored, started)
    return report, populations


def clean_record(
    engine: Engine,
    clean: Served,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: dict[str, Any],
    transfer: Bundle | None,
    started: float,
) -> dict[str, Any]:
    """The clean test images as served: the false-positive rate and each model's accuracy."""
    threshold = engine.calibration.threshold
    false_positives = int((clean.combined > threshold).sum())
    batch = settings["batch_size"]
    transfer_pred = labels(transfer.model, x, batch, engine.device) if transfer is not None else None
    return {
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


def attack_record(
    engine: Engine,
    spec: AttackSpec,
    model: nn.Module,
    clean: Served,
    scored: Served,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    settings: dict[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    """One attack: how often it fooled its target, and how the served verdicts caught it (then per delivery)."""
    threshold = engine.calibration.threshold
    batch = settings["batch_size"]
    target_pred = labels(model, x_adv, batch, engine.device)
    correct_before = labels(model, x, batch, engine.device) == y
    fooled = target_pred != y
    flagged = scored.combined > threshold
    record: dict[str, Any] = {
        "family": spec.family,
        "attack": describe_method(spec, settings),
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
    if spec.objective != "adaptive":
        record["delivered"] = delivered_stats(
            engine, to_images(x_adv), clean, settings["deliveries"], settings["seed"], progress, spec.name
        )
    if spec.objective == "square":
        record["queries"] = settings["square_queries"]
    if spec.objective == "adaptive":
        record["differentiable"] = {
            d.name: "bpda" if any(v in NON_DIFFERENTIABLE_VIEWS for _, v in d.needs) else "exact"
            for d in engine.detectors
        }
        record["lambda"], record["kappa"] = settings["adaptive_lambda"], settings["adaptive_kappa"]
    return record


def benign_record(engine: Engine, clean: Served, scored: Served, started: float) -> dict[str, Any]:
    """One benign change of the clean test images: how often it is flagged, and whether the label moves."""
    threshold = engine.calibration.threshold
    return {
        "n": len(clean.combined),
        "flag_rate": calib.flag_rate(scored.combined, threshold),
        "flagged": rate_with_interval(scored.combined > threshold),
        "auroc_vs_clean": auroc(clean.combined, scored.combined),
        "robust_label_changed": rate(scored.robust_pred != clean.robust_pred),
        "seconds": round(time.perf_counter() - started, 1),
    }
