"""Robust-accuracy evaluation of a bundle: a table (JSON + Markdown) and a robustness curve (PNG)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from training.attacks import NamedAttack, evaluation_attack, parse_eps, predict, robust_mask
from training.bundle import Bundle
from training.data import ArrayDataset, load_splits, seeded_subset, stratified_order, stratified_prefix, to_float
from training.stats import format_interval, wilson_interval

CURVE_EPS = ("0", "2/255", "4/255", "8/255", "12/255", "16/255")


AUTOATTACK_CHUNK = 100


def _interval(mask: torch.Tensor) -> list[float]:
    return list(wilson_interval(int(mask.sum().item()), len(mask)))


def _advance(progress: Progress, task: TaskID, _stage: str, done: int) -> None:
    progress.advance(task, done)


def resumable_robust_mask(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list[NamedAttack],
    checkpoint: Path | None,
    run_key: dict[str, Any],
    seed: int,
    chunk: int = AUTOATTACK_CHUNK,
    on_progress: Callable[[str, int], None] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``robust_mask`` in chunks of ``chunk`` images, saving each finished chunk to ``checkpoint``.

    AutoAttack on 1,000 images runs for hours on a CPU core: an interrupted run loses at most one chunk, and
    the same command continues where it stopped.  A checkpoint written for another ``run_key`` (bundle
    version, eps, seed, images) is ignored and replaced.  Each chunk seeds torch from ``seed`` and its index,
    so a resumed run gives the same result as an uninterrupted one.
    """
    state: dict[str, Any] = {"key": run_key, "robust": [], "stage_counts": {}}
    if checkpoint is not None and checkpoint.exists():
        saved = json.loads(checkpoint.read_text())
        if saved.get("key") == run_key:
            state = saved
    for start in range(len(state["robust"]), len(y), chunk):
        if on_progress and start == len(state["robust"]) and start:
            on_progress("resumed", start * len(attacks))
        torch.manual_seed(seed * 100_003 + start // chunk)
        part = slice(start, start + chunk)
        mask, after = robust_mask(model, x[part], y[part], attacks, on_progress=on_progress)
        state["robust"].extend(mask.tolist())
        for stage, fraction in after.items():
            state["stage_counts"][stage] = state["stage_counts"].get(stage, 0) + round(fraction * len(mask))
        if checkpoint is not None:
            staging = checkpoint.with_suffix(".tmp")
            staging.write_text(json.dumps(state))
            staging.replace(checkpoint)
    robust = torch.tensor(state["robust"], dtype=torch.bool, device=y.device)
    return robust, {stage: count / len(y) for stage, count in state["stage_counts"].items()}


def evaluate_bundle(
    model_bundle: Bundle,
    test_set: ArrayDataset,
    attacks: list[str],
    eps: float,
    n: int,
    n_autoattack: int | None,
    seed: int = 0,
    curve_eps: tuple[str, ...] = CURVE_EPS,
    curve_n: int | None = None,
    device: torch.device | str = "cpu",
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Clean and robust accuracy on the same seeded random ``n`` test images.

    AutoAttack (``n_autoattack``) and the robustness curve (``curve_n``) may run on fewer: a seeded,
    class-stratified choice among those ``n``, never the first ones in index order (a test split stored class
    by class would give a handful of classes).  Every accuracy comes with its 95% Wilson interval
    (``*_ci95``) and the number of images behind it.  With ``checkpoint_dir``, AutoAttack saves its progress
    there and resumes from it.
    """
    model = model_bundle.model.to(device).eval()
    subset = seeded_subset(test_set, n, seed)
    x, y = to_float(subset.images, device), subset.labels.to(device)
    clean_mask = predict(model, x) == y
    result: dict[str, Any] = {
        "bundle": str(model_bundle.path),
        "version": model_bundle.version,
        "method": model_bundle.metadata["method"],
        "eps": eps,
        "n_eval": len(y),
        "seed": seed,
        "subsets": "n: seeded random test images; AutoAttack and curve: seeded class-stratified choice among them",
        "clean": clean_mask.float().mean().item(),
        "clean_ci95": _interval(clean_mask),
        "attacks": {},
        "attacks_ci95": {},
        "attacks_n": {},
        "seconds": {},
    }
    with Progress(transient=True) as progress:
        for name in attacks:
            torch.manual_seed(seed)
            attack = evaluation_attack(name, eps, len(model_bundle.classes), seed)
            started = time.perf_counter()
            if name == "autoattack":
                # Stratified order, not sorted: every finished chunk prefix is itself class-balanced.
                pick = stratified_order(y.cpu(), seed)[: n_autoattack or len(y)].to(y.device)
                xs, ys = x[pick], y[pick]
                task = progress.add_task(f"{name} on {len(ys)} images", total=len(ys) * len(attack))
                key = {"version": model_bundle.version, "eps": eps, "seed": seed, "n": n, "picked": len(ys)}
                checkpoint = checkpoint_dir / f"autoattack-{model_bundle.version}.json" if checkpoint_dir else None
                mask, stages = resumable_robust_mask(
                    model, xs, ys, attack, checkpoint, key, seed, on_progress=partial(_advance, progress, task)
                )
            else:
                xs, ys = x, y
                task = progress.add_task(f"{name} on {len(ys)} images", total=len(ys))
                mask, stages = robust_mask(model, xs, ys, attack, on_progress=partial(_advance, progress, task))
            result["attacks"][name] = mask.float().mean().item()
            result["attacks_ci95"][name] = _interval(mask)
            result["attacks_n"][name] = len(ys)
            result["seconds"][name] = round(time.perf_counter() - started, 1)
            if name == "autoattack":
                result["n_eval_autoattack"] = len(ys)
                result["autoattack_per_class"] = torch.bincount(ys.cpu(), minlength=len(model_bundle.classes)).tolist()
                result["autoattack_clean"] = clean_mask[pick].float().mean().item()
                result["autoattack_clean_ci95"] = _interval(clean_mask[pick])
                result["autoattack_stages"] = stages
                result["autoattack_stages_ci95"] = {
                    stage: list(wilson_interval(round(value * len(ys)), len(ys))) for stage, value in stages.items()
                }
        curve = []
        pick = stratified_prefix(y.cpu(), curve_n, seed).to(y.device)
        x, y = x[pick], y[pick]
        result["n_curve"] = len(y)
        task = progress.add_task("robustness curve (PGD-20)", total=len(curve_eps) * len(y))
        for text in curve_eps:
            torch.manual_seed(seed)
            value = parse_eps(text)
            attack = evaluation_attack("pgd20", value, len(model_bundle.classes), seed) if value > 0 else []
            mask, _ = robust_mask(model, x, y, attack, on_progress=lambda _s, k: progress.advance(task, k))
            if value == 0:
                progress.advance(task, len(y))
            curve.append({"eps": text, "accuracy": mask.float().mean().item(), "ci95": _interval(mask), "n": len(y)})
        result["curve"] = curve
    return result


def _cell(accuracy: float, n: int) -> str:
    return format_interval(round(accuracy * n), n)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """Accuracy in % with its 95% Wilson interval; the column header says on how many images."""
    attack_names = sorted({a for r in results for a in r["attacks"]})
    header = "| bundle | method | n | clean | " + " | ".join(attack_names) + " |"
    lines = [header, "|" + "---|" * (4 + len(attack_names))]
    for r in results:
        cells = [
            _cell(r["attacks"][a], r.get("attacks_n", {}).get(a, r["n_eval"])) if a in r["attacks"] else "-"
            for a in attack_names
        ]
        lines.append(
            f"| {Path(r['bundle']).name} | {r['method']} | {r['n_eval']} | {_cell(r['clean'], r['n_eval'])} | "
            + " | ".join(cells)
            + " |"
        )
    notes = sorted({f"{a} on {r['attacks_n'][a]}" for r in results for a in r.get("attacks_n", {})})
    notes = [note for note in notes if not note.endswith(f" on {results[0]['n_eval']}")]
    footer = "\nAccuracy % [95% Wilson interval]" + (f"; {', '.join(notes)} images (class-stratified)" if notes else "")
    return "\n".join(lines) + "\n" + footer + "\n"


def plot_curves(results: list[dict[str, Any]], path: Path, title: str = "Robustness curve (PGD-20, L-inf)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in results:
        xs = [255 * parse_eps(p["eps"]) for p in r["curve"]]
        ys = [100 * p["accuracy"] for p in r["curve"]]
        if all("ci95" in p for p in r["curve"]):  # 95% Wilson intervals as error bars
            below = [y - 100 * p["ci95"][0] for y, p in zip(ys, r["curve"], strict=True)]
            above = [100 * p["ci95"][1] - y for y, p in zip(ys, r["curve"], strict=True)]
            ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=r.get("label", r["method"]))
        else:
            ax.plot(xs, ys, marker="o", label=r.get("label", r["method"]))
    ax.set_xlabel("eps (x/255)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_eval(
    bundle_dirs: list[str],
    data_dir: str | None,
    attacks: list[str],
    eps: float,
    n: int,
    n_autoattack: int | None,
    seed: int,
    out: Path,
    device: torch.device,
    curve_n: int | None = None,
) -> list[dict[str, Any]]:
    from training.bundle import load

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    results, test_sets = [], {}
    for directory in bundle_dirs:
        model_bundle = load(directory, device)
        dataset = model_bundle.metadata["dataset"]
        if dataset not in test_sets:
            test_sets[dataset] = load_splits(dataset, data_dir).test
        result = evaluate_bundle(
            model_bundle,
            test_sets[dataset],
            attacks,
            eps,
            n,
            n_autoattack,
            seed,
            curve_n=curve_n,
            device=device,
            checkpoint_dir=out,
        )
        result["label"] = f"{model_bundle.metadata['method']} ({Path(directory).name})"
        results.append(result)
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "eval.md").write_text(markdown_table(results))
    plot_curves(results, out / "robustness_curve.png")

    table = Table(title=f"Accuracy % [95% Wilson interval] at eps {eps * 255:.1f}/255")
    for column in ("bundle", "method", "n", "clean", *attacks):
        table.add_column(column, justify="right" if column not in ("bundle", "method") else "left")
    for r in results:
        table.add_row(
            Path(r["bundle"]).name,
            r["method"],
            str(r["n_eval"]),
            _cell(r["clean"], r["n_eval"]),
            *[_cell(r["attacks"][a], r["attacks_n"][a]) for a in attacks],
        )
    console.print(table)
    console.print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'robustness_curve.png'}")
    return results
