"""Squeezers and detectors on known inputs."""

from __future__ import annotations

import pytest
import torch

from worker.engine import detectors as det


def test_bit_depth_quantises_to_the_grid():
    x = torch.linspace(0, 1, 101).view(1, 1, 1, -1)
    levels = det.bit_depth(x, 2) * 3
    assert torch.equal(levels, levels.round()) and set(levels.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_median_2x2_removes_an_isolated_spike_and_keeps_flat_regions():
    x = torch.full((1, 1, 5, 5), 0.25)
    x[0, 0, 2, 2] = 1.0
    out = det.median_2x2(x)
    assert out.shape == x.shape and torch.allclose(out, torch.full_like(x, 0.25))


def test_median_2x2_is_the_lower_median_of_each_window():
    x = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate")
    windows = padded.unfold(2, 2, 1).unfold(3, 2, 1).flatten(-2)  # (B, C, H, W, 4)
    assert torch.equal(det.median_2x2(x), windows.median(dim=-1).values)


def test_jpeg_round_trip_changes_noise_little_and_keeps_shape():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = det.jpeg(x, 90)
    assert out.shape == x.shape and 0 < (out - x).abs().mean() < 0.2


def test_noise_pattern_is_fixed_and_small():
    a, b = det.noise_pattern([3, 8, 8]), det.noise_pattern([3, 8, 8])
    assert torch.equal(a, b) and abs(a.std().item() - det.NOISE_SIGMA) < det.NOISE_SIGMA / 2


def test_detectors_are_zero_when_views_agree_and_positive_when_they_do_not():
    p = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    q = torch.tensor([[0.1, 0.9], [0.5, 0.5]])
    same = {(m, v): p for m in (det.ROBUST, det.STANDARD) for v in (det.IDENTITY, "bits", "median", "jpeg", "noise")}
    differ = {**same, (det.STANDARD, det.IDENTITY): q, (det.STANDARD, "bits"): q}
    for name in ("kl_rs", "squeeze_bits_s"):
        detector = det.CATALOGUE[name]
        assert torch.allclose(detector.score(same), torch.zeros(2), atol=1e-6)
        scores = detector.score({**differ, (det.STANDARD, det.IDENTITY): p} if name == "squeeze_bits_s" else differ)
        assert scores[0] > 0.5 and abs(scores[1].item()) < 1e-6
    assert torch.allclose(det.CATALOGUE["disagree"].score(differ), torch.tensor([0.9, 0.5]))


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="nope"):
        det.resolve(["kl_rs", "nope"])
