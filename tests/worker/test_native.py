"""The perturbation detector's native-resolution view: the tile grid, and the score the engine serves from
the model input and the tiles."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from worker.engine import native
from worker.engine.engine import Engine
from worker.engine.images import to_model_input


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 12))
def test_tile_grid_stays_inside_without_overlap_and_within_the_cap(height, width, max_tiles):
    tile = 64
    corners = native.tile_grid(height, width, tile, max_tiles)
    if height < tile or width < tile:
        assert corners == []
        return
    assert 1 <= len(corners) <= max_tiles
    for top, left in corners:
        assert 0 <= top <= height - tile and 0 <= left <= width - tile
    for i, (t1, l1) in enumerate(corners):  # no two tiles share a pixel
        for t2, l2 in corners[i + 1 :]:
            assert abs(t1 - t2) >= tile or abs(l1 - l2) >= tile
    assert native.tile_grid(height, width, tile, max_tiles) == corners  # deterministic


def test_large_images_use_the_whole_cap_and_spread_over_the_image():
    corners = native.tile_grid(1024, 1024)
    assert len(corners) == native.MAX_TILES - 2 or len(corners) >= 4  # a 2x3 or 2x2 grid on a square
    tops, lefts = {t for t, _ in corners}, {left for _, left in corners}
    assert min(tops) < 300 and max(tops) > 600 and min(lefts) < 300 and max(lefts) > 600


def test_native_tiles_cut_exactly_the_grid_pixels():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    tiles, owner = native.native_tiles(images)
    corners = native.tile_grid(200, 300)
    assert owner.tolist() == [0] * len(corners)  # the 32 px image has none
    for k, (top, left) in enumerate(corners):
        expected = torch.from_numpy(images[0][top : top + 64, left : left + 64]).permute(2, 0, 1).float() / 255
        assert torch.equal(tiles[k], expected)


class MeanLogit(torch.nn.Module):
    """A stand-in detector whose adversarial logit is a known function of the input (its mean brightness)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(m), 10 * m - 5], dim=1)


def test_image_logit_is_the_larger_of_the_model_input_and_the_tile_mean():
    model = MeanLogit()
    x = torch.tensor([0.2, 0.9, 0.5]).view(3, 1, 1, 1).expand(3, 3, 8, 8).contiguous()
    tiles = torch.tensor([0.6, 0.8, 0.1, 0.1]).view(4, 1, 1, 1).expand(4, 3, 64, 64).contiguous()
    owner = torch.tensor([0, 0, 1, 1])  # image 2 has no tiles
    logits = native.image_logits(model, x, tiles, owner)
    expected = torch.tensor([max(10 * 0.2 - 5, 10 * 0.7 - 5), max(10 * 0.9 - 5, 10 * 0.1 - 5), 10 * 0.5 - 5])
    torch.testing.assert_close(logits, expected)


def test_engine_scores_a_large_image_from_its_tiles(engine):
    """Served score of a 256 px image = softplus(max(model-input logit, mean tile logit)), recomputed here
    from the detector itself."""
    assert engine.detector is not None
    served = Engine(engine.robust, engine.standard, None, threads=1, detectors=["perturbation_net"],
                    detector=engine.detector)  # fmt: skip
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (256, 192, 3), dtype=np.uint8))
    _, scores = served.score_images([image])
    x = to_model_input([image], served.input_size)
    tiles, _owner = native.native_tiles([np.asarray(image)])
    with torch.no_grad():
        out_x, out_t = engine.detector.model(x), engine.detector.model(tiles)
    reference = max(float(out_x[0, 1] - out_x[0, 0]), float((out_t[:, 1] - out_t[:, 0]).mean()))
    assert scores["perturbation_net"].item() == pytest.approx(float(F.softplus(torch.tensor(reference))), rel=1e-4)
    # analyse() on the encoded file gives the same score (PNG is lossless): the served path reads the tiles.
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    verdict = served.analyse([buffer.getvalue()])[0]
    assert verdict.scores["perturbation_net"] == pytest.approx(scores["perturbation_net"].item(), rel=1e-5)
