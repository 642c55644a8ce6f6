"""Plot the per-epoch held-out check of training runs: clean, FGSM and PGD-10 accuracy, one panel per run.

    .venv/bin/python scripts/plot_holdout.py runs/co/pgd-at runs/co/otjr --out results/co/holdout.png

Catastrophic overfitting shows as the FGSM curve climbing away from a PGD-10 curve that falls towards zero;
epochs the trainer flagged are marked with a red band.  Also prints the series as a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

SERIES = {"holdout_clean": "clean", "holdout_fgsm": "FGSM", "holdout_pgd10": "PGD-10"}


def holdout_series(run_dir: Path) -> dict[str, list]:
    """Per epoch: held-out accuracies (%) and whether the epoch was flagged, from ``metrics.jsonl``."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    series: dict[str, list] = {"epoch": [r["epoch"] for r in records]}
    for key in SERIES:
        series[key] = [round(100 * r[key], 1) for r in records]
    series["catastrophic_overfitting"] = [bool(r.get("catastrophic_overfitting")) for r in records]
    return series


def plot(runs: dict[str, dict[str, list]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, (name, series) in zip(axes[0], runs.items(), strict=True):
        for key, label in SERIES.items():
            ax.plot(series["epoch"], series[key], marker="o", markersize=3, label=label)
        for epoch, flagged in zip(series["epoch"], series["catastrophic_overfitting"], strict=True):
            if flagged:
                ax.axvspan(epoch - 0.5, epoch + 0.5, color="red", alpha=0.15)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out accuracy (%)")
    axes[0][0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    runs = {run.name: holdout_series(run) for run in args.runs}
    console = Console()
    for name, series in runs.items():
        table = Table(title=f"{name}: held-out accuracy %")
        for column in ("epoch", *SERIES.values(), "CO flagged"):
            table.add_column(column, justify="right")
        for i, epoch in enumerate(series["epoch"]):
            flagged = "yes" if series["catastrophic_overfitting"][i] else ""
            table.add_row(str(epoch), *(str(series[key][i]) for key in SERIES), flagged)
        console.print(table)
    plot(runs, args.out)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
