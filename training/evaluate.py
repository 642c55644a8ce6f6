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
from training.data import ArrayDataset, load_splits, seeded_subset, to_float

CURVE_EPS = ("0", "2/255", "4/255", "8/255", "12/255", "16/255")


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
    """Clean and robust accuracy on the same seeded ``n`` test images; AutoAttack on the first ``n_autoattack``."""
    model = model_bundle.model.to(device).eval()
    subset = seeded_subset(test_set, n, seed)
    x, y = to_float(subset.images, device), subset.labels.to(device)
    result: dict[str, Any] = {
        "bundle": str(model_bundle.path),
        "version": model_bundle.version,
        "method": model_bundle.metadata["method"],
        "eps": eps,
        "n_eval": len(y),
        "seed": seed,
        "clean": (predict(model, x) == y).float().mean().item(),
        "attacks": {},
        "seconds": {},
    }
    with Progress(transient=True) as progress:
        for name in attacks:
            torch.manual_seed(seed)
            xs, ys = (x[:n_autoattack], y[:n_autoattack]) if name == "autoattack" and n_autoattack else (x, y)
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
            result["seconds"][name] = round(time.perf_counter() - started, 1)
            if name == "autoattack":
                result["n_eval_autoattack"] = len(ys)
                result["autoattack_stages"] = stages
        curve = []
        x, y = x[:curve_n], y[:curve_n]
        result["n_curve"] = len(y)
        task = progress.add_task("robustness curve (PGD-20)", total=len(curve_eps) * len(y))
        for text in curve_eps:
            torch.manual_seed(seed)
            value = parse_eps(text)
            attack = evaluation_attack("pgd20", value, len(model_bundle.classes), seed) if value > 0 else []
            mask, _ = robust_mask(model, x, y, attack, on_progress=lambda _s, k: progress.advance(task, k))
            if value == 0:
                progress.advance(task, len(y))
            curve.append({"eps": text, "accuracy": mask.float().mean().item()})
        result["curve"] = curve
    return result


def markdown_table(results: list[dict[str, Any]]) -> str:
    attack_names = sorted({a for r in results for a in r["attacks"]})
    header = "| bundle | method | n | clean | " + " | ".join(attack_names) + " |"
    lines = [header, "|" + "---|" * (4 + len(attack_names))]
    for r in results:
        cells = [f"{100 * r['attacks'][a]:.2f}" if a in r["attacks"] else "-" for a in attack_names]
        lines.append(
            f"| {Path(r['bundle']).name} | {r['method']} | {r['n_eval']} | {100 * r['clean']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: list[dict[str, Any]], path: Path, title: str = "Robustness curve (PGD-20, L-inf)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in results:
        xs = [255 * parse_eps(p["eps"]) for p in r["curve"]]
        ax.plot(xs, [100 * p["accuracy"] for p in r["curve"]], marker="o", label=r.get("label", r["method"]))
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

    table = Table(title=f"Accuracy (%) at eps {eps * 255:.1f}/255")
    for column in ("bundle", "method", "n", "clean", *attacks):
        table.add_column(column, justify="right" if column not in ("bundle", "method") else "left")
    for r in results:
        table.add_row(
            Path(r["bundle"]).name,
            r["method"],
            str(r["n_eval"]),
            f"{100 * r['clean']:.2f}",
            *[f"{100 * r['attacks'][a]:.2f}" for a in attacks],
        )
    console.print(table)
    console.print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'robustness_curve.png'}")
    return results
