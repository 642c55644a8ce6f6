"""Compare models on the same AutoAttack images, paired: which is more robust, by how much, and is it noise?

    .venv/bin/python scripts/compare_autoattack.py \
        pgd-at=results/fast-w0.25/autoattack-07119623caa220f0.json \
        trades=runs/trades-nfgsm-w0.25-eval/autoattack-<version>.json --json results/budget70-w0.25/paired.json

Each file is the per-image checkpoint that ``python -m training eval`` writes (``OUT/autoattack-<version>.json``).
Runs with the same seed, eps and ``--n`` attack the same class-stratified order of test images, so their
common prefix is the same images: a run on all 1,000 can be compared with one on 200 over those 200.  Every
model is compared with the first one named (``training.stats.paired_difference``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from training.stats import format_interval, paired_difference

SAME_IMAGES = ("seed", "eps", "n")  # the checkpoint key fields that fix the image order


def read_checkpoints(named: list[str]) -> dict[str, dict]:
    checkpoints = {}
    for item in named:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"error: expected NAME=PATH, got {item!r}")
        checkpoints[name] = json.loads(Path(path).read_text())
    keys = {name: tuple(c["key"][k] for k in SAME_IMAGES) for name, c in checkpoints.items()}
    if len(set(keys.values())) > 1:
        raise SystemExit(f"error: these runs attacked different images (seed, eps, n): {keys}")
    return checkpoints


def compare(checkpoints: dict[str, dict]) -> dict:
    common = min(len(c["robust"]) for c in checkpoints.values())
    outcomes = {name: c["robust"][:common] for name, c in checkpoints.items()}
    reference, *others = outcomes
    return {
        "images": common,
        "reference": reference,
        "robust_accuracy": {name: sum(o) / common for name, o in outcomes.items()},
        "versus_reference": {name: paired_difference(outcomes[reference], outcomes[name]) for name in others},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", metavar="NAME=PATH", help="AutoAttack checkpoint files")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args()
    result = compare(read_checkpoints(args.checkpoints))
    n, reference = result["images"], result["reference"]
    table = Table(title=f"AutoAttack on the same {n} class-stratified test images, paired against {reference}")
    for column in ("model", "robust accuracy % [95%]", f"minus {reference}, points [95%]", "only this / only ref",
                   "McNemar p"):  # fmt: skip
        table.add_column(column)
    for name, accuracy in result["robust_accuracy"].items():
        row = [name, format_interval(round(accuracy * n), n)]
        if name in result["versus_reference"]:
            d = result["versus_reference"][name]
            row += [f"{100 * d['difference']:+.1f} [{100 * d['ci95_low']:+.1f}, {100 * d['ci95_high']:+.1f}]",
                    f"{d['second_only']} / {d['first_only']}", f"{d['p_value']:.3f}"]  # fmt: skip
        table.add_row(*row)
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
