"""scripts/compare_autoattack.py: paired AutoAttack comparison of runs over their common images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_checkpoint(path: Path, robust: list[bool], seed: int = 0) -> str:
    key = {"version": path.stem, "eps": 8 / 255, "seed": seed, "n": 1000, "picked": len(robust)}
    path.write_text(json.dumps({"key": key, "robust": robust, "stage_counts": {}}))
    return str(path)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_autoattack.py"), *args],
        capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip


def test_runs_are_compared_on_their_common_prefix_of_images(tmp_path):
    """A 1,000-image run and a 10-image run share their first 10 images; the comparison uses only those."""
    reference = [True, True, True, False, False, True, False, True, True, False] + [True] * 990
    other = [True, False, False, False, True, True, False, False, True, False]
    out = tmp_path / "paired.json"
    done = run(f"ref={write_checkpoint(tmp_path / 'a.json', reference)}",
               f"other={write_checkpoint(tmp_path / 'b.json', other)}", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["images"] == 10 and result["reference"] == "ref"
    assert result["robust_accuracy"] == {"ref": 0.6, "other": 0.4}
    versus = result["versus_reference"]["other"]
    assert (versus["first_only"], versus["second_only"]) == (3, 1)  # images 1, 2, 7 and image 4
    assert versus["difference"] == -0.2
    assert "paired against ref" in done.stdout


def test_runs_on_different_images_are_refused(tmp_path):
    done = run(f"a={write_checkpoint(tmp_path / 'a.json', [True], seed=0)}",
               f"b={write_checkpoint(tmp_path / 'b.json', [True], seed=1)}")  # fmt: skip
    assert done.returncode != 0 and "different images" in done.stderr
