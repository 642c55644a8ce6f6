"""scripts/compare_detectors_by_delivery.py: the threshold is set on one half of every benign group and the
rates are read on the other half; the web thumbnails it counts (``worker.research.delivery.thumbnailed``) are read
without native tiles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from worker.engine import native
from worker.research.delivery import thumbnailed

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_detectors_by_delivery.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("compare_detectors_by_delivery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_threshold_is_the_worst_benign_groups_quantile_on_the_fitting_half(script):
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(400, generator=generator)
    noisy = torch.randn(400, generator=generator) + 1.0  # the group that must set the threshold
    attack = torch.randn(400, generator=generator) + 4.0
    report = script.compare({"clean": (clean, False), "benign noise-4": (noisy, False), "attack PGD-8": (attack, True)})

    expected = max(float(torch.quantile(s[::2], 1 - script.TARGET)) for s in (clean, noisy))
    assert report["threshold"] == pytest.approx(expected, abs=1e-4)
    assert expected == pytest.approx(float(torch.quantile(noisy[::2], 1 - script.TARGET)))
    # rates come from the other half only, which the threshold never saw
    held_noisy = report["benign"]["benign noise-4"]
    assert held_noisy["n"] == 200
    assert held_noisy["rate"] == pytest.approx(float((noisy[1::2] > expected).float().mean()), abs=1e-4)
    lower, upper = held_noisy["ci95"]
    assert lower <= held_noisy["rate"] <= upper
    detected = report["attacks"]["attack PGD-8"]
    assert detected["detected"]["rate"] == pytest.approx(float((attack[1::2] > expected).float().mean()), abs=1e-4)
    assert detected["auroc_vs_clean"] > detected["auroc_vs_noise4"] > 0.9


def test_an_attack_the_detector_cannot_see_is_detected_at_about_the_false_flag_rate(script):
    generator = torch.Generator().manual_seed(1)
    scores = {
        "clean": (torch.randn(2000, generator=generator), False),
        "benign noise-4": (torch.randn(2000, generator=generator), False),
        "attack invisible": (torch.randn(2000, generator=generator), True),
    }
    report = script.compare(scores)
    attack = report["attacks"]["attack invisible"]
    assert attack["auroc_vs_clean"] == pytest.approx(0.5, abs=0.04)
    assert attack["detected"]["rate"] < 0.03


def test_thumbnails_are_too_small_for_native_tiles_and_keep_the_aspect():
    wide = Image.new("RGB", (640, 320), (120, 80, 40))
    tall = Image.new("RGB", (90, 400), (10, 200, 30))
    small = thumbnailed([wide, tall] * 20, seed=0)
    assert len(small) == 40
    for original, thumb in zip([wide, tall] * 20, small, strict=True):
        assert 24 <= min(thumb.size) < 64
        assert not native.has_tiles(thumb.height, thumb.width)
        ratio = original.width / original.height
        assert thumb.width / thumb.height == pytest.approx(ratio, rel=0.1)
    assert len({thumb.size for thumb in small}) > 2  # sizes drawn, not one fixed size
    assert [t.size for t in thumbnailed([wide, tall] * 20, seed=0)] == [t.size for t in small]
