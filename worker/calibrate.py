"""Fit the detector combiner and set its threshold for a pair of bundles; writes the calibration artefact.

    python -m worker.calibrate --robust runs/cpu-otjr/best --standard runs/cpu-standard/best \
        --data-dir ../shared/data/cifar10-jpeg.tar.gz --n-clean 2000 --n-adv 2000

Everything comes from the TRAINING split (the test split is kept for ``worker.evaluate``), and from the part
of it that neither model nor the perturbation detector (``worker.train_detector``; found in the robust
bundle's ``perturbation-detector/`` folder) was trained on, as their training records say: a model is more
confident on images it has seen, so clean scores of seen images would set the threshold too low and the
served false-positive rate would exceed the target.  Clean and adversarial images come from the same
pool for the same reason (otherwise the combiner could learn "seen or not" instead of "perturbed or not").

The pool is split, with a fixed seed, into: clean images for fitting the combiner (plus one benign change of
each, so that re-compression or resizing is learned as clean); adversarial images for fitting it (PGD L-inf
at 2-16/255 and CW-inf against the standard model, PGD against the robust model, all saved to 8 bits as a
real adversarial image would be); held-out clean images, and one benign change of each, that set the
threshold (``calibration.operating_threshold``: at most the target rate of the clean images and of each kind
of benign change is flagged); held-out adversarial images on which the AUROC table is measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from training.attacks import margin_objective, pgd, square
from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.data import ArrayDataset, load_splits, to_float
from worker.benign import BENIGN, quantise
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine.combiner import fit_combiner
from worker.engine.engine import Engine, find_detector

DEFAULT_HOLDOUT = 1000  # training.trainer.TrainConfig.holdout


SQUARE_QUERIES = 500  # as worker.evaluate and the audits' robustness check run it


@dataclass(frozen=True)
class AttackSpec:
    target: str  # "standard" or "robust"
    objective: str  # "pgd" (cross-entropy), "cw" (margin) or "square" (black-box, SQUARE_QUERIES queries)
    eps_255: int

    @property
    def name(self) -> str:
        return f"{self.objective}-{self.eps_255}-{self.target[0]}"

    def run(self, engine: Engine, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        model = engine.robust.model if self.target == det.ROBUST else engine.standard.model
        eps = self.eps_255 / 255
        if self.objective == "square":
            return square(model, x, y, eps, SQUARE_QUERIES)
        objective = {"objective": margin_objective} if self.objective == "cw" else {}
        with torch.enable_grad():
            return pgd(model, x, y, eps, 2.5 * eps / steps, steps, **objective)


# Two thirds against the standard model (what transfers to the web), one third against the robust model.
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
)


def holdout_of(metadata: dict[str, Any]) -> int:
    """The --holdout a bundle was trained with (read from its recorded command; the trainer's default)."""
    match = re.search(r"--holdout[ =](\d+)", metadata.get("command", ""))
    return int(match.group(1)) if match else DEFAULT_HOLDOUT


def detector_images(pool: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """The pool images a perturbation detector trained with ``seed`` and ``n`` used (``worker.train_detector``)."""
    if n > len(pool):
        raise ValueError(f"asked for {n} images but the pool holds {len(pool)}")
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]


def unseen_pool(n_train: int, bundles: Sequence[Bundle], detector: Bundle | None = None) -> tuple[torch.Tensor, str]:
    """Indices of training images no bundle trained on (as trainer.py selects them), and how they were found.

    With a perturbation detector, the images it trained on (drawn from the models' unseen pool) are left out too.
    """
    pool, note = _models_unseen_pool(n_train, bundles)
    if detector is None:
        return pool, note
    record = detector.metadata.get("training") or {}
    if "seed" not in record or "pool_images" not in record:
        raise ValueError(f"{detector.path} records no training images; retrain it with worker.train_detector")
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
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Adversarial copies (8-bit), the attack name of each (round-robin over ``mix``) and whether it fooled
    its target."""
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
            adv = quantise(spec.run(engine, xs, ys, steps))
            model = engine.robust.model if spec.target == det.ROBUST else engine.standard.model
            with torch.no_grad():
                fooled[idx] = (model(adv).argmax(1) != ys).cpu()
            out[idx] = adv.cpu()
            progress.advance(task, len(idx))
    return out, [mix[int(i)].name for i in assignment], fooled


def apply_benign(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[str]]:
    """One benign change per image, round-robin over ``BENIGN``."""
    generator = torch.Generator().manual_seed(seed)
    names = list(BENIGN)
    out = torch.empty_like(x)
    assigned = [names[i % len(names)] for i in range(len(x))]
    for name in names:
        idx = torch.tensor([i for i, a in enumerate(assigned) if a == name], dtype=torch.long)
        if len(idx):
            out[idx] = BENIGN[name](x[idx], generator)
    return out, assigned


def subset_scores(scores: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[mask] for k, v in scores.items()}


def run_calibration(
    engine: Engine,
    train: ArrayDataset,
    pool: torch.Tensor,
    *,
    n_clean: int,
    n_adv: int,
    detectors: Sequence[str],
    target_fpr: float = calib.DEFAULT_TARGET_FPR,
    seed: int = 0,
    steps: int = 10,
    batch: int = 128,
    benign: bool = True,
    data_info: dict[str, Any] | None = None,
    console: Console | None = None,
) -> tuple[calib.Calibration, dict[str, dict[str, float]]]:
    """Fit and threshold; returns the artefact and a table {detector: {column: value}} for display.

    ``engine`` should compute every detector to be measured (the table); ``detectors`` are the ones the
    artefact keeps.
    """
    console = console or Console(stderr=True)
    if n_clean < 4 or n_adv < 2:
        raise ValueError("need at least 4 clean and 2 adversarial images")
    if n_clean + n_adv > len(pool):
        raise ValueError(f"asked for {n_clean + n_adv} images but the pool holds {len(pool)}")
    order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    clean_idx, adv_idx = order[:n_clean], order[n_clean : n_clean + n_adv]
    x_clean, x_src = to_float(train.images[clean_idx]), to_float(train.images[adv_idx])
    y_src = train.labels[adv_idx]
    fit_clean, thr_clean = x_clean[: n_clean // 2], x_clean[n_clean // 2 :]

    with make_progress(console) as progress:
        x_adv, attack_names, fooled = attack_all(engine, x_src, y_src, steps, batch, seed, progress)
        s_fit_clean = score_all(engine, fit_clean, batch, progress, "scoring clean (fit)")
        s_thr_clean = score_all(engine, thr_clean, batch, progress, "scoring clean (held out)")
        s_adv = score_all(engine, x_adv, batch, progress, "scoring adversarial")
        s_fit_benign: dict[str, torch.Tensor] = {}
        s_held_benign: dict[str, torch.Tensor] = {}
        benign_names: list[str] = []
        if benign:
            s_fit_benign = score_all(engine, apply_benign(fit_clean, seed)[0], batch, progress, "scoring benign (fit)")
            held_benign, benign_names = apply_benign(thr_clean, seed + 1)
            s_held_benign = score_all(engine, held_benign, batch, progress, "scoring benign (held out)")

    half = n_adv // 2
    fit_mask = torch.zeros(n_adv, dtype=torch.bool)
    fit_mask[:half] = True
    negatives = {k: torch.cat([s_fit_clean[k], s_fit_benign.get(k, s_fit_clean[k][:0])]) for k in s_fit_clean}
    combiner = fit_combiner(negatives, subset_scores(s_adv, fit_mask), detectors, seed=seed)
    held_adv = subset_scores(s_adv, ~fit_mask)
    held_names = [n for n, keep in zip(attack_names, ~fit_mask, strict=True) if keep]
    combined_thr = combiner.logit(s_thr_clean)
    combined_adv = combiner.logit(held_adv)
    benign_groups: dict[str, torch.Tensor] = {}
    if benign:
        combined_benign = combiner.logit(s_held_benign)
        for name in BENIGN:
            benign_groups[name] = combined_benign[torch.tensor([n == name for n in benign_names])]
    operating = calib.operating_threshold(combined_thr, benign_groups, target_fpr)

    # Thresholds and measurements for every computed detector (the table); the artefact keeps the chosen.
    all_scores_clean = {**s_thr_clean, "combined": combined_thr}
    all_scores_adv = {**held_adv, "combined": combined_adv}
    table: dict[str, dict[str, float]] = {}
    for name in all_scores_clean:
        threshold = operating if name == "combined" else calib.threshold_for_fpr(all_scores_clean[name], target_fpr)
        row = {"auroc": calib.roc_auc(all_scores_clean[name], all_scores_adv[name])}
        row["tpr"] = calib.flag_rate(all_scores_adv[name], threshold)
        for spec in ATTACK_MIX:
            mask = torch.tensor([n == spec.name for n in held_names])
            if mask.any():
                row[spec.name] = calib.roc_auc(all_scores_clean[name], all_scores_adv[name][mask])
        table[name] = row

    benign_rates = {name: calib.flag_rate(scores, operating) for name, scores in benign_groups.items()}

    by_attack = {}
    for spec in ATTACK_MIX:
        mask = torch.tensor([n == spec.name for n in attack_names])
        held = torch.tensor([n == spec.name for n in held_names])
        by_attack[spec.name] = {
            "n_held_out": int(held.sum()),
            "fooled_target": float(fooled[mask].float().mean()) if mask.any() else 0.0,
            "auroc_combined": table["combined"].get(spec.name, 0.0),
        }
    evaluation = {
        "split": "held-out part of the calibration pool (training split)",
        "n_clean": len(thr_clean),
        "n_adversarial": int((~fit_mask).sum()),
        "auroc": {k: v["auroc"] for k, v in table.items()},
        "tpr_at_target_fpr": {k: v["tpr"] for k, v in table.items()},
        "by_attack": by_attack,
        "benign_flag_rate": benign_rates,
    }
    data = {
        **(data_info or {}),
        "split": "train",
        "seed": seed,
        "n_fit_clean": len(fit_clean),
        "n_fit_benign": len(fit_clean) if benign else 0,
        "n_fit_adversarial": half,
        "n_threshold_clean": len(thr_clean),
        "attacks": [
            f"{s.name} (L-inf {s.objective}, eps {s.eps_255}/255 vs {s.target}, {steps} steps)" for s in ATTACK_MIX
        ],
    }
    artefact = calib.build(
        detectors=detectors,
        detector_set=det.DETECTOR_SET,
        combiner=combiner,
        combined_clean=combined_thr,
        detector_clean={k: s_thr_clean[k] for k in detectors},
        target_fpr=target_fpr,
        bundles=engine.bundle_versions,
        data=data,
        evaluation=evaluation,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        combined_benign=benign_groups,
    )
    return artefact, table


def print_report(console: Console, artefact: calib.Calibration, table: dict[str, dict[str, float]]) -> None:
    columns = [s.name for s in ATTACK_MIX if any(s.name in row for row in table.values())]
    result = Table(title=f"Held-out detection (training-split pool), TPR at {artefact.target_fpr:.1%} FPR")
    result.add_column("detector")
    result.add_column("kept", justify="center")
    result.add_column("AUROC", justify="right")
    result.add_column("TPR", justify="right")
    for column in columns:
        result.add_column(column, justify="right")
    for name, row in table.items():
        kept = "*" if name in artefact.detectors or name == "combined" else ""
        cells = [f"{row.get(c, float('nan')):.3f}" for c in columns]
        result.add_row(name, kept, f"{row['auroc']:.3f}", f"{row['tpr']:.3f}", *cells)
    console.print(result)
    benign = artefact.evaluation.get("benign_flag_rate", {})
    if benign:
        console.print("benign flag rates (held out): " + ", ".join(f"{k} {v:.1%}" for k, v in benign.items()))
    console.print(
        f"threshold {artefact.threshold:.4f}: measured FPR {artefact.measured_fpr:.2%} on {artefact.n_threshold} "
        f"clean images (95% upper bound {artefact.fpr_upper_95:.2%}); calibration version {artefact.version}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--robust", required=True, help="robust model bundle folder")
    parser.add_argument("--standard", required=True, help="standard companion bundle folder")
    parser.add_argument("--data-dir", required=True, help="the data set the bundles were trained on")
    parser.add_argument("--dataset", help="data set name (default: the robust bundle's)")
    parser.add_argument("--n-clean", type=int, default=2000, help="clean images: half fit, half set the threshold")
    parser.add_argument("--n-adv", type=int, default=2000, help="adversarial images: half fit, half measure")
    parser.add_argument("--target-fpr", type=float, default=calib.DEFAULT_TARGET_FPR)
    parser.add_argument(
        "--detectors", default=",".join(det.DEFAULT_DETECTORS), help="comma-separated, kept in the artefact"
    )
    parser.add_argument("--measure", default="all", help="detectors to measure in the table: 'all' or a comma list")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps per attack")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-benign", action="store_true", help="do not add benign changes to the clean fit set")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cache-dir")
    parser.add_argument(
        "--detector", help="perturbation detector bundle (default: perturbation-detector/ in the robust bundle, if any)"
    )
    parser.add_argument("--out", help="artefact path (default: calibration.json in the robust bundle's folder)")
    return parser.parse_args(argv)


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
            "worker.train_detector`, or leave them out of --detectors"
        )
        return 2
    measure = [d.name for d in det.resolve(measure) if d.computable_with(available)]
    engine = Engine(
        load_bundle(args.robust), load_bundle(args.standard), None, device=args.device, threads=args.threads,
        max_batch=args.batch_size, detectors=measure, detector=detector,
    )  # fmt: skip
    dataset = args.dataset or engine.robust.metadata.get("dataset", "cifar10")
    splits = load_splits(dataset, args.data_dir, Path(args.cache_dir) if args.cache_dir else None)
    if splits.train.classes != engine.classes:
        console.print(f"[red]the data set's classes {splits.train.classes} differ from the bundle's {engine.classes}")
        return 2
    pool, pool_note = unseen_pool(len(splits.train), [engine.robust, engine.standard], engine.detector)
    console.print(f"calibration pool: {pool_note}")
    info = {"dataset": dataset, "source": splits.source, "pool": pool_note}
    try:
        artefact, table = run_calibration(
            engine, splits.train, pool, n_clean=args.n_clean, n_adv=args.n_adv, detectors=keep,
            target_fpr=args.target_fpr, seed=args.seed, steps=args.steps, batch=args.batch_size,
            benign=not args.no_benign, data_info=info, console=console,
        )  # fmt: skip
    except ValueError as err:
        console.print(f"[red]{err}")
        return 2
    out = Path(args.out) if args.out else calib.default_path(args.robust)
    calib.save(artefact, out)
    print_report(console, artefact, table)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
