"""Learning-rate multipliers (training/schedules.py)."""

from __future__ import annotations

import pytest

from training.schedules import SCHEDULES, lr_multiplier


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 1.0), (74.9, 1.0), (75, 0.1), (89.9, 0.1), (90, 0.01), (99.99, 0.01), (100, 0.01)],
)
def test_piecewise_follows_the_authors_schedule(epoch, expected):
    assert lr_multiplier("piecewise", 100)(epoch) == pytest.approx(expected)


def test_piecewise_scales_with_the_run_length():
    multiplier = lr_multiplier("piecewise", 20)
    assert [multiplier(e) for e in (14.9, 15, 17.9, 18)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_cosine_endpoints_and_midpoint():
    multiplier = lr_multiplier("cosine", 10)
    assert multiplier(0) == pytest.approx(1.0)
    assert multiplier(5) == pytest.approx(0.5)
    assert multiplier(10) == pytest.approx(0.0, abs=1e-12)
    assert multiplier(12) == pytest.approx(0.0, abs=1e-12)  # clamped after the end
    values = [multiplier(e / 4) for e in range(41)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_onecycle_peaks_at_forty_percent():
    multiplier = lr_multiplier("onecycle", 10)
    assert multiplier(0) == pytest.approx(0.0)
    assert multiplier(2) == pytest.approx(0.5)
    assert multiplier(4) == pytest.approx(1.0)
    assert multiplier(7) == pytest.approx(0.5)
    assert multiplier(10) == pytest.approx(0.0)
    assert multiplier(11) == 0.0  # never negative
    grid = [multiplier(e / 10) for e in range(101)]
    assert max(grid) == pytest.approx(1.0) and grid.index(max(grid)) == 40


def test_unknown_schedule():
    assert set(SCHEDULES) == {"piecewise", "cosine", "onecycle"}
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lr_multiplier("step", 10)
