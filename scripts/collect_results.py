"""Turn training runs and their evaluation into results/robustness.json, results/README tables, and models/.

    .venv/bin/python scripts/collect_results.py --eval runs/eval-otjr/eval.json --eval ... --results results \
        --ship otjr --ship standard --models models

One record per run: method, arch, width, data set, epochs, clean, pgd20, cw, autoattack, n_eval,
n_eval_autoattack, training seconds and the exact training command (read from the bundle).  ``--ship``
re-exports a run's bundle into ``models/`` with its test-set metrics added to the metadata (a new version).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from training import bundle
from training.evaluate import plot_curves
from training.stats import wilson_interval


def training_seconds(run_dir: Path) -> float:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return round(sum(json.loads(line)["seconds"] for line in lines), 1)


def record(result: dict) -> dict:
    bundle_dir = Path(result["bundle"])
    meta = bundle.load(bundle_dir).metadata
    return {
        "method": meta["method"],
        "arch": meta["arch"],
        "width": meta["width"],
        "dataset": meta["dataset"],
        "data_source": meta["data_source"],
        "epochs": meta["training"]["epochs"],
        "train_images": meta["training"]["train_images"],
        "checkpoint": f"{meta['metrics']['checkpoint']} (epoch {meta['metrics']['epoch']})",
        "clean": result["clean"],
        "pgd20": result["attacks"].get("pgd20"),
        "cw": result["attacks"].get("cw"),
        "autoattack": result["attacks"].get("autoattack"),
        "autoattack_stages": result.get("autoattack_stages"),
        "ci95": {
            "clean": interval(result["clean"], result["n_eval"]),
            **{
                name: interval(value, result.get("attacks_n", {}).get(name, result["n_eval"]))
                for name, value in result["attacks"].items()
            },
        },
        "autoattack_subset": result.get("subsets", "first n_eval_autoattack images (before issue 13)"),
        "n_eval": result["n_eval"],
        "n_eval_autoattack": result.get("n_eval_autoattack"),
        "seconds": training_seconds(bundle_dir.parent),
        "eval_seconds": result["seconds"],
        "bundle_version": meta["version"],
        "command": meta["command"],
    }


def interval(accuracy: float, n: int) -> list[float]:
    """95% Wilson interval of an accuracy measured on n images."""
    return list(wilson_interval(round(accuracy * n), n))


def pct(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + ("" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")


def markdown(records: list[dict]) -> str:
    lines = [
        "| method | checkpoint | clean | PGD-20 | CW-inf | AutoAttack | n (AA) | training wall time* |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ci = r.get("ci95", {})
        cells = [pct(r[k], ci.get(k)) for k in ("clean", "pgd20", "cw", "autoattack")]
        lines.append(
            f"| {r['method']} | {r['checkpoint']} | {' | '.join(cells)} | "
            f"{r['n_eval']} ({r['n_eval_autoattack']}) | {r['seconds'] / 60:.0f} min |"
        )
    return "\n".join(lines) + "\n\nAccuracy % [95% Wilson interval].\n"


def ship(result: dict, models_dir: Path) -> Path:
    source = bundle.load(result["bundle"])
    meta = source.metadata
    name = f"{meta['method']}-{meta['arch']}-w{meta['width']:g}"
    test_metrics = {
        "test_clean": result["clean"],
        **{f"test_{k}": v for k, v in result["attacks"].items()},
        "test_n": result["n_eval"],
        "test_n_autoattack": result.get("n_eval_autoattack"),
    }
    unversioned = {k: v for k, v in meta.items() if k not in ("version", "format")}
    unversioned["metrics"] = {**meta["metrics"], **test_metrics}
    target = models_dir / name
    shutil.rmtree(target, ignore_errors=True)
    return bundle.save(source.model, unversioned, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, action="append", required=True, help="eval.json (repeatable)")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--ship", action="append", default=[], help="method whose bundle goes to --models")
    parser.add_argument("--models", type=Path, default=Path("models"))
    args = parser.parse_args()

    results = [result for path in args.eval for result in json.loads(path.read_text())]
    records = [record(r) for r in results]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "robustness.json").write_text(json.dumps(records, indent=2) + "\n")
    (args.results / "robustness.md").write_text(markdown(records))
    widths = ", ".join(sorted({f"{r['width']:g}" for r in records}))
    title = f"PreActResNet-18 (width {widths}), CIFAR-10 JPEG, PGD-20"
    plot_curves(results, args.results / "robustness_curve.png", title)
    for result in results:
        if result["method"] in args.ship:
            print(f"shipped {ship(result, args.models)}")
    print(markdown(records))


if __name__ == "__main__":
    main()
