"""The domain gate: its cues, its bundle, its threshold rule, and the engine's label contract with it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine import domain_gate
from worker.engine.engine import Engine, EngineError
from worker.research.web_images import _fonts, render_page

FEATURES = 32  # the tiny robust bundle's penultimate width (PreActResNet-18 at width 1/16)


def photo_like(seed: int, side: int = 96) -> Image.Image:
    """Smooth colour with sensor-like noise: no two neighbouring pixels alike, as in a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, (x + y) / 2], axis=2) * 200 + 20
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


def page(seed: int = 1) -> Image.Image:
    return render_page(seed, _fonts())


def gate_net(cues: tuple[str, ...], *, flat_weight: float = 0.0, bias: float = 0.0) -> domain_gate.GateNet:
    """A gate whose logit is ``bias`` plus ``flat_weight`` times the share of flat pixels (if it reads them)."""
    net = domain_gate.GateNet(FEATURES + len(domain_gate.STATS) + len(cues), hidden=1)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        if "flat" in cues:
            net.hidden.weight[0, FEATURES + len(domain_gate.STATS) + cues.index("flat")] = 1.0
        net.out.weight[0, 0] = flat_weight
        net.out.bias[0] = bias
    return net


def metadata(robust_version: str, cues: tuple[str, ...], threshold: float) -> dict:
    return {
        "arch": domain_gate.ARCH,
        "hidden": 1,
        "inputs": {"features": FEATURES, "stats": list(domain_gate.STATS), "cues": list(cues)},
        "for_bundles": {"robust": robust_version},
        "calibration": {"scale": 1.0, "bias": 0.0},
        "threshold": threshold,
        "command": "tests",
    }


@pytest.fixture
def robust_copy(bundle_dirs, tmp_path) -> Path:
    """The tiny robust bundle with its perturbation detector, copied, so a gate added to it stays in this test."""
    return Path(shutil.copytree(bundle_dirs[0], tmp_path / "robust"))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_cues_tell_a_rendered_page_from_a_photo_and_read_the_size():
    photo, drawn = domain_gate.image_cues(photo_like(0, 300)), domain_gate.image_cues(page())
    names = list(domain_gate.CUES)
    assert drawn[names.index("flat")] > 0.5 > photo[names.index("flat")]
    assert drawn[names.index("colours")] < photo[names.index("colours")]
    assert photo[names.index("log_side")] == pytest.approx(np.log2(300))
    # Upscaling a small image leaves it smooth at its own resolution: less native detail than the original.
    small = photo_like(1, 32)
    larger = small.resize((256, 256), Image.Resampling.BICUBIC)
    assert domain_gate.image_cues(larger)[names.index("detail")] < domain_gate.image_cues(small)[names.index("detail")]


def test_the_threshold_rule_keeps_a_label_at_or_above_the_threshold(tmp_path):
    gate = domain_gate.save(gate_net(()), metadata("r", (), threshold=0.5), tmp_path / "gate")
    p = torch.tensor([0.0, 0.4999, 0.5, 0.9], dtype=torch.float64)
    assert gate.confident(p).tolist() == [False, False, True, True]
    # Platt scaling: the probability is sigmoid(scale * logit + bias).
    logit = torch.tensor([-2.0, 0.0, 3.0])
    expected = torch.sigmoid(2 * logit.double() - 1)
    torch.testing.assert_close(domain_gate.calibrated(logit, {"scale": 2.0, "bias": -1.0}), expected)


def test_a_gate_bundle_round_trips_and_refuses_tampering(tmp_path):
    net = gate_net(("flat",), flat_weight=-5.0, bias=1.0)
    gate = domain_gate.save(net, metadata("r", ("flat",), 0.3), tmp_path / "gate")
    loaded = domain_gate.load(tmp_path / "gate")
    assert loaded.version == gate.version and loaded.cues == ("flat",) and loaded.threshold == 0.3
    features, logits = torch.randn(3, FEATURES), torch.randn(3, 10)
    cues = domain_gate.cues_of([photo_like(0), page(), photo_like(1)])
    torch.testing.assert_close(loaded.probability(features, logits, cues), gate.probability(features, logits, cues))
    record = json.loads((tmp_path / "gate" / "bundle.json").read_text())
    record["threshold"] = 0.0  # a lower threshold, written by hand: every label would be kept
    (tmp_path / "gate" / "bundle.json").write_text(json.dumps(record))
    with pytest.raises(domain_gate.GateError, match="content hash"):
        domain_gate.load(tmp_path / "gate")
    with pytest.raises(domain_gate.GateError, match="not a gate bundle"):
        domain_gate.load(tmp_path / "nowhere")


def test_the_engine_finds_the_gate_and_names_a_class_only_above_its_threshold(robust_copy, bundle_dirs):
    """A gate that reads the share of flat pixels of the image as served: a rendered page (mostly flat) is
    below its threshold and gets no class; a photo-like image keeps its label; ``in_domain`` is the gate's
    probability, and the label is null exactly where it is under the threshold."""
    version = json.loads((robust_copy / "bundle.json").read_text())["version"]
    domain_gate.save(
        gate_net(("flat",), flat_weight=-10.0, bias=0.0), metadata(version, ("flat",), threshold=0.4),
        domain_gate.default_dir(robust_copy),
    )  # fmt: skip
    engine = Engine.from_bundles(robust_copy, bundle_dirs[1], threads=1)
    assert engine.gate is not None
    photo, drawn = engine.analyse([png(photo_like(0, 200)), png(page())])
    assert drawn.label is None and drawn.in_domain < 0.4
    assert photo.label == engine.classes[photo.label_index] and photo.in_domain == pytest.approx(0.5, abs=0.05)
    assert photo.top_k and drawn.top_k  # the model's guess is still reported
    # Model-space input: the cues are read from the model input itself.
    flat = engine.analyse_tensor(torch.full((1, 3, 8, 8), 0.5))[0]
    assert flat.label is None and flat.in_domain < 0.4


def test_without_a_gate_the_engine_keeps_the_calibration_path(engine):
    assert engine.gate is None
    assert engine.in_domain(torch.full((2, 2), 0.5), {})[0] is None  # no calibration: no domain score


def test_the_engine_refuses_a_gate_trained_for_another_robust_bundle(robust_copy, bundle_dirs):
    domain_gate.save(gate_net(()), metadata("0123456789abcdef", (), 0.5), domain_gate.default_dir(robust_copy))
    with pytest.raises(EngineError, match="train_gate"):
        Engine.from_bundles(robust_copy, bundle_dirs[1], threads=1)


def test_a_gate_that_reads_the_standard_model_shares_its_forward_with_the_detectors(robust_copy, bundle_dirs, engine):
    """The standard model's softmax the gate's forward gives is the view the detectors take: their scores are
    the ones the engine without a gate computes."""
    versions = {name: json.loads((path / "bundle.json").read_text())["version"]
                for name, path in (("robust", robust_copy), ("standard", bundle_dirs[1]))}  # fmt: skip
    net = domain_gate.GateNet(FEATURES + len(domain_gate.STATS) + FEATURES, hidden=2)
    record = {**metadata(versions["robust"], (), 0.5), "for_bundles": versions, "hidden": 2}
    record["inputs"] = {**record["inputs"], "standard_features": FEATURES}
    domain_gate.save(net, record, domain_gate.default_dir(robust_copy))
    gated = Engine.from_bundles(robust_copy, bundle_dirs[1], threads=1)
    assert gated.gate is not None and gated.gate.reads_standard
    images = [png(photo_like(seed, 80)) for seed in range(3)]
    for with_gate, without in zip(gated.analyse(images), engine.analyse(images), strict=True):
        assert with_gate.scores == pytest.approx(without.scores, rel=1e-5, abs=1e-6)
        assert (with_gate.label is None) == (with_gate.in_domain < 0.5)
    with pytest.raises(domain_gate.GateError, match="standard"):
        gated.gate.probability(torch.zeros(1, FEATURES), torch.zeros(1, 2), torch.zeros(1, len(domain_gate.CUES)))
