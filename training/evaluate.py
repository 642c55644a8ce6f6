"""Robust-accuracy evaluation of a bundle: a table (JSON + Markdown) and a robustness curve (PNG)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from training.attacks import evaluation_attack, parse_eps, predict, robust_mask
from training.bundle import Bundle
from training.data import ArrayDataset, load_splits, seeded_subset, stratified_prefix, to_float
from training.stats import format_interval, wilson_interval

CURVE_EPS = ("0", "2/255", "4/255", "8/255", "12/255", "16/255")


def _interval(mask: torch.Tensor) -> list[float]:
    return list(wilson_interval(int(mask.sum().item()), len(mask)))


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
) -> dict[str, Any]:
    """Clean and robust accuracy on the same seeded random ``n`` test images.

    AutoAttack (``n_autoattack``) and the robustness curve (``curve_n``) may run on fewer: a seeded,
    class-stratified choice among those ``n``, never the first ones in index order (a test split stored class
    by class would give a handful of classes).  Every accuracy comes with its 95% Wilson interval
    (``*_ci95``) and the number of images behind it.
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
            pick = stratified_prefix(y.cpu(), n_autoattack if name == "autoattack" else None, seed).to(y.device)
            xs, ys = x[pick], y[pick]
            task = progress.add_task(f"{name} on {len(ys)} images", total=len(ys) * (4 if name == "autoattack" else 1))
            started = time.perf_counter()
            mask, stages = robust_mask(
                model,
                xs,
                ys,
                evaluation_attack(name, eps, len(model_bundle.classes), seed),
                on_progress=lambda _stage, k, task=task: progress.advance(task, k),
            )
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
            model_bundle, test_sets[dataset], attacks, eps, n, n_autoattack, seed, curve_n=curve_n, device=device
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
