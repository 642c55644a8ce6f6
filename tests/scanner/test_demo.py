"""``scanner demo`` end to end through the installed console script, on tiny bundles and data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from training import bundle
from training.models import build_model

pytestmark = pytest.mark.slow  # each test runs scanner demo (models loaded in a subprocess)

REPO = Path(__file__).resolve().parents[2]
SCANNER = REPO / ".venv" / "bin" / "scanner"


def _tiny_bundle(directory: Path, method: str) -> Path:
    model = build_model("preact18", 2, [0.5] * 3, [0.25] * 3, width=0.0625)
    metadata = {
        "arch": "preact18",
        "width": 0.0625,
        "num_classes": 2,
        "classes": ["bright", "dark"],
        "input_size": [3, 8, 8],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "method": method,
        "dataset": "imagefolder",
    }
    return bundle.save(model, metadata, directory)


def test_demo_prints_both_models_verdicts(tiny_tarball: Path, tmp_path: Path) -> None:
    robust = _tiny_bundle(tmp_path / "robust", "otjr")
    standard = _tiny_bundle(tmp_path / "standard", "standard")
    done = subprocess.run(
        [
            str(SCANNER),
            "demo",
            "--data",
            str(tiny_tarball),
            "--robust",
            str(robust),
            "--standard",
            str(standard),
            "--models-only",
            "--pages",
            "2",
            "--per-page",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "robust model   otjr" in done.stdout
    assert "% on perturbed images" in done.stdout
    assert done.stdout.count("yes") == 3  # every second image of six is perturbed


@pytest.mark.browser
def test_demo_crawls_its_site_and_scores_against_the_truth(tiny_tarball: Path, tmp_path: Path) -> None:
    """The README's main command, on tiny bundles: build the site, serve it, crawl it with Chromium, analyse in
    process, and find every image however the page places it."""
    robust = _tiny_bundle(tmp_path / "robust", "otjr")
    standard = _tiny_bundle(tmp_path / "standard", "standard")
    done = subprocess.run(
        [str(SCANNER), "demo", "--data", str(tiny_tarball), "--robust", str(robust), "--standard", str(standard),
         "--pages", "2", "--per-page", "5", "--photos", "2"],
        capture_output=True,
        text=True,
        timeout=900,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "found 12/12 images" in done.stdout  # img, srcset, background, lazy and inserted, and the photos
    assert "photo-00" in done.stdout and "photo-01" in done.stdout and "/2 photos" in done.stdout
    for placement in ("srcset", "background", "lazy", "inserted"):
        assert placement in done.stdout
    assert "not found" not in done.stdout


def test_demo_explains_missing_bundle(tiny_tarball: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SCANNER), "demo", "--data", str(tiny_tarball), "--robust", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 2
    assert "is not a model bundle" in done.stderr
