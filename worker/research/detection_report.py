"""The evaluation's report: the targets checked, the ROC and score plots, ``detection.json`` and the tables."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from worker.engine import calibration as calib
from worker.research.detection_metrics import FPRS, auroc, roc_curve

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
