"""Deliveries and benign changes: 8-bit RGB out, the sizes they promise, bounded strength, repeatable."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from worker.research import delivery


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    return Image.fromarray(smooth)


@pytest.mark.parametrize("name", list(delivery.DELIVERIES))
def test_deliveries_give_rgb_images_of_the_promised_size(photo, name):
    out = delivery.DELIVERIES[name](photo, random.Random(0))
    assert out.mode == "RGB"
    expected = (round(photo.width * 0.75), round(photo.height * 0.75)) if name == "downscale0.75" else photo.size
    assert out.size == expected
    again = delivery.DELIVERIES[name](photo, random.Random(0))
    assert np.array_equal(np.asarray(out), np.asarray(again))  # repeatable from the generator


@pytest.mark.parametrize("name", list(delivery.BENIGN))
def test_benign_changes_are_repeatable_and_change_the_image(photo, name):
    out = delivery.BENIGN[name](photo, random.Random(3))
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(delivery.BENIGN[name](photo, random.Random(3))))
    if out.size == photo.size:
        assert not np.array_equal(np.asarray(out), np.asarray(photo))


def test_noise_stays_within_its_stated_strength(photo):
    grey = Image.new("RGB", (200, 200), (128, 128, 128))
    out = np.asarray(delivery.noise(grey, random.Random(1)), dtype=np.float64) - 128
    assert 0.5 < out.std() <= 4.2  # sigma drawn from 1 to 4 (in 1/255)


def test_jpeg_quality_is_what_it_says(photo):
    """Lower quality, larger error: q95 stays closer to the original than q70."""
    original = np.asarray(photo, dtype=np.float64)
    error = {q: np.abs(np.asarray(delivery.jpeg(q)(photo, random.Random(0)), dtype=np.float64) - original).mean()
             for q in (95, 70)}  # fmt: skip
    assert error[95] < error[70]
