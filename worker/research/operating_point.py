"""The operating point: the combiner and the domain model fitted on the calibration sets, and the threshold set
on their held-out groups, two populations apart (images with native tiles, and those without).  See
``worker.research.calibrate``."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine import domain
from worker.engine.combiner import fit_combiner
from worker.research import delivery
from worker.research.calibration_sets import ATTACK_MIX, CalibrationSets
from worker.research.detector_data import NATURAL_ATTACKS
from worker.research.scoring import Scored


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
    table = held_out_table(sets, sets.cifar_adv.subset(~half_adv), calibrated, operating, target_fpr)
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


def held_out_table(
    sets: CalibrationSets,
    held_adv: Scored,
    calibrated: Callable[[Scored], torch.Tensor],
    operating: float,
    target_fpr: float,
) -> dict[str, dict[str, float]]:
    """Per detector and for the combined score (``calibrated``, at the ``operating`` threshold): AUROC and TPR
    on held-out CIFAR-10 attacks, AUROC on the web attacks, and the held-out web images flagged."""
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
    return table


def subset(scores: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[mask] for k, v in scores.items()}
