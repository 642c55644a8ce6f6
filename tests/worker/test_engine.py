"""The engine end to end on tiny real bundles: bytes in, verdicts out."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from training import bundle
from worker.engine import EmptyImage, Engine, EngineError, ImageError, UnsupportedFormat, Verdict
from worker.engine.images import to_model_input

RNG = np.random.default_rng(1)


def image_bytes(n: int) -> list[bytes]:
    """``n`` images of assorted sizes, aspect ratios and formats."""
    out = []
    for i in range(n):
        size = (int(RNG.integers(5, 60)), int(RNG.integers(5, 60)))
        image = Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, ("PNG", "JPEG", "WEBP", "GIF")[i % 4])
        out.append(buffer.getvalue())
    return out


def test_batched_equals_one_by_one(engine: Engine):
    items = image_bytes(7)
    batched = Engine(engine.robust, engine.standard, None, threads=1, max_batch=64).analyse(items)
    single = [engine.analyse([item])[0] for item in items]
    chunked = engine.analyse(items)  # max_batch 4: two chunks
    for a, b, c in zip(batched, single, chunked, strict=True):
        assert isinstance(a, Verdict) and isinstance(b, Verdict) and isinstance(c, Verdict)
        assert a.label == b.label == c.label
        assert math.isclose(a.confidence, b.confidence, abs_tol=1e-5)
        assert math.isclose(a.confidence, c.confidence, abs_tol=1e-5)
        for name in a.scores:
            assert math.isclose(a.scores[name], b.scores[name], rel_tol=1e-4, abs_tol=1e-5), name


def test_errors_are_returned_in_place_and_never_raised(engine: Engine):
    items = image_bytes(2)
    results = engine.analyse([items[0], b"", b"not an image at all", items[1], items[0][:20]])
    assert isinstance(results[0], Verdict) and isinstance(results[3], Verdict)
    assert isinstance(results[1], EmptyImage) and isinstance(results[2], UnsupportedFormat)
    assert isinstance(results[4], ImageError)
    assert results[1].to_dict()["code"] == "empty"


def test_verdict_fields(engine: Engine):
    image = Image.fromarray(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    (verdict,) = engine.analyse([image])
    probs = [p for _, p in verdict.top_k]
    assert verdict.top_k[0] == (verdict.label, verdict.confidence)
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4  # two classes: top-2 is all
    assert set(verdict.scores) == {d.name for d in engine.detectors}
    assert all(math.isfinite(s) and s >= 0 for s in verdict.scores.values())
    assert verdict.combined is None and verdict.flagged is None and verdict.calibration_version is None
    assert verdict.model_version == f"{engine.robust.version}+{engine.standard.version}"
    assert set(verdict.timings_ms) == {"decode", "inference", "detection"}
    assert all(t >= 0 for t in verdict.timings_ms.values())
    assert verdict.to_dict()["label"] == verdict.label


def test_pil_input_and_tensor_input_agree(engine: Engine):
    image = Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (from_pil,) = engine.analyse([image])
    (from_tensor,) = engine.analyse_tensor(to_model_input([image], engine.input_size))
    assert from_pil.label == from_tensor.label
    assert math.isclose(from_pil.confidence, from_tensor.confidence, abs_tol=1e-6)


def test_engine_sets_threads_and_device(bundle_dirs):
    # The suite's fixture already runs torch on one thread, so asking the engine for one proves nothing: start
    # from a count that is neither, and ask for another.
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        engine = Engine.from_bundles(*bundle_dirs, threads=2, device="cpu")
        assert torch.get_num_threads() == 2 and engine.device.type == "cpu"
    finally:
        torch.set_num_threads(previous)


def test_incompatible_bundles_are_refused(engine: Engine, tmp_path):
    model = engine.standard.model
    metadata = {**engine.standard.metadata, "classes": ["a", "b"]}
    other = bundle.load(bundle.save(model, metadata, tmp_path / "other"))
    with pytest.raises(EngineError, match="classes"):
        Engine(engine.robust, other, threads=1)
    with pytest.raises(ValueError):
        Engine(engine.robust, engine.standard, threads=1, max_batch=0)
