"""scripts/plot_holdout.py: the per-epoch held-out check of runs, as a table and a PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def write_run(folder: Path, fgsm: list[float], pgd: list[float], flagged_epoch: int | None) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for i, (f, p) in enumerate(zip(fgsm, pgd, strict=True)):
        epoch = i + 1
        record = {"epoch": epoch, "holdout_clean": 0.5, "holdout_fgsm": f, "holdout_pgd10": p, "seconds": 1.0}
        record["catastrophic_overfitting"] = epoch == flagged_epoch
        lines.append(json.dumps(record))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_table_and_plot_of_a_collapsing_and_a_healthy_run(tmp_path):
    collapsing = write_run(tmp_path / "fgsm-collapses", [0.30, 0.35, 0.80], [0.28, 0.30, 0.01], flagged_epoch=3)
    healthy = write_run(tmp_path / "otjr-holds", [0.30, 0.33, 0.35], [0.29, 0.32, 0.34], flagged_epoch=None)
    out = tmp_path / "plots" / "holdout.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot_holdout.py"), str(collapsing), str(healthy), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": ""}, check=True,
    )  # fmt: skip
    rows = [line for line in done.stdout.splitlines() if line.count("│") >= 5]
    cells = [[cell.strip() for cell in row.split("│")[1:-1]] for row in rows]
    assert ["3", "50.0", "80.0", "1.0", "yes"] in cells  # the collapse: FGSM up, PGD-10 near zero, flagged
    assert ["3", "50.0", "35.0", "34.0", ""] in cells
    assert sum(row[-1] == "yes" for row in cells) == 1
    with Image.open(out) as image:
        assert image.width > 2 * image.height  # two panels side by side
