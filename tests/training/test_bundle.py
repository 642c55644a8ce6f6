"""Model bundles (training/bundle.py): round trip, content-hash versions and clear errors on bad bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training import bundle
from training.bundle import METADATA_FILE, WEIGHTS_FILE, BundleError, load, save
from training.models import DETECTOR_ARCHITECTURES, build_model

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def tiny_model(seed: int = 0, width: float = 0.0625):
    torch.manual_seed(seed)
    model = build_model("preact18", 3, MEAN, STD, width)
    # Non-trivial batch-norm statistics, so the round trip must carry buffers too.
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 8, 8))
    return model.eval()


def metadata(**overrides):
    base = {
        "arch": "preact18",
        "width": 0.0625,
        "num_classes": 3,
        "classes": ["cat", "dog", "owl"],
        "input_size": [3, 8, 8],
        "mean": MEAN,
        "std": STD,
        "method": "otjr",
        "eps": 8 / 255,
    }
    return {**base, **overrides}


@pytest.fixture
def saved(tmp_path) -> Path:
    return save(tiny_model(), metadata(), tmp_path / "bundle")


def rewrite_metadata(directory: Path, rehash: bool = True, **changes) -> None:
    """Edit bundle.json; with ``rehash`` also fix the version, as a careful forger would."""
    meta = json.loads((directory / METADATA_FILE).read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    if rehash:
        meta["version"] = bundle._content_hash((directory / WEIGHTS_FILE).read_bytes(), meta)
    (directory / METADATA_FILE).write_text(json.dumps(meta))


def test_round_trip_gives_identical_outputs(saved):
    model = tiny_model()
    loaded = load(saved)
    assert not loaded.model.training
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.classes == ["cat", "dog", "owl"]
    assert loaded.metadata["method"] == "otjr"
    assert loaded.path == saved
    assert loaded.metadata["format"] == bundle.FORMAT


def test_version_is_a_stable_content_hash(tmp_path):
    first = load(save(tiny_model(), metadata(), tmp_path / "a")).version
    second = load(save(tiny_model(), metadata(), tmp_path / "b")).version
    assert first == second
    assert len(first) == 16 and int(first, 16) >= 0
    assert json.loads((tmp_path / "a" / METADATA_FILE).read_text())["version"] == first
    # Different weights or different metadata give a different version.
    assert load(save(tiny_model(seed=1), metadata(), tmp_path / "c")).version != first
    assert load(save(tiny_model(), metadata(method="pgd-at"), tmp_path / "d")).version != first


def test_save_overwrites_an_existing_bundle(tmp_path):
    save(tiny_model(seed=0), metadata(), tmp_path / "b")
    second = save(tiny_model(seed=1), metadata(), tmp_path / "b")
    assert load(second).version == load(save(tiny_model(seed=1), metadata(), tmp_path / "c")).version


def test_save_requires_the_metadata_a_server_needs(tmp_path):
    meta = metadata()
    del meta["classes"]
    with pytest.raises(BundleError, match="classes"):
        save(tiny_model(), meta, tmp_path / "b")


def test_tampered_weights_are_detected(saved):
    weights = saved / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="content hash .* does not match"):
        load(saved)


def test_tampered_metadata_is_detected(saved):
    rewrite_metadata(saved, rehash=False, classes=["cat", "dog", "wolf"])
    with pytest.raises(BundleError, match="modified after export"):
        load(saved)


def test_missing_version_is_detected(saved):
    meta = json.loads((saved / METADATA_FILE).read_text())
    del meta["version"]
    (saved / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="does not match version None"):
        load(saved)


@pytest.mark.parametrize(
    "changes",
    [{"width": 0.125}, {"arch": "wrn28-10"}, {"num_classes": 4}],
    ids=["width", "arch", "num_classes"],
)
def test_declared_architecture_that_does_not_fit_the_weights(saved, changes):
    rewrite_metadata(saved, **changes)
    with pytest.raises(BundleError, match="weights do not match"):
        load(saved)


def test_unknown_architecture_is_a_bundle_error(saved):
    rewrite_metadata(saved, arch="resnet9000")
    with pytest.raises(BundleError, match="resnet9000"):
        load(saved)


def test_metadata_missing_a_required_field_is_a_bundle_error(saved):
    rewrite_metadata(saved, mean=None)
    with pytest.raises(BundleError, match="mean"):
        load(saved)


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, METADATA_FILE])
def test_missing_file(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(BundleError, match="is not a model bundle"):
        load(saved)


def test_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="is not a model bundle"):
        load(tmp_path / "nowhere")


def test_invalid_json(saved):
    (saved / METADATA_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load(saved)


def test_unsupported_format(saved):
    rewrite_metadata(saved, format="someone-else/2")
    with pytest.raises(BundleError, match="unsupported bundle format"):
        load(saved)


def test_unreadable_weights_even_with_a_matching_hash(saved):
    (saved / WEIGHTS_FILE).write_bytes(b"definitely not safetensors")
    rewrite_metadata(saved)  # re-hash over the garbage
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load(saved)


def test_bundle_error_is_a_value_error():
    assert issubclass(BundleError, ValueError)


@pytest.mark.parametrize("arch", DETECTOR_ARCHITECTURES)
def test_every_detector_design_round_trips_through_a_bundle(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, 2, MEAN, STD, 8).train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(8, 3, 32, 32))
    model.eval()
    loaded = load(save(model, metadata(arch=arch, width=8, num_classes=2, classes=["clean", "adversarial"]), tmp_path))
    tile = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(tile), model(tile))


@pytest.mark.parametrize("arch", ["perturbation-cnn", "perturbation-cnn2"])
def test_detector_designs_round_trip_and_differ_in_where_they_stride(tmp_path, arch):
    """Both detector designs rebuild from their bundle; perturbation-cnn2 strides its second convolution, so
    on a 64 px tile its second layer works at 32 px where the original works at 64 px."""
    torch.manual_seed(0)
    model = build_model(arch, 2, MEAN, STD, 8).eval()
    loaded = load(save(model, metadata(arch=arch, width=8, num_classes=2, classes=["clean", "adversarial"]), tmp_path))
    tile = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(tile), model(tile))
        second = model.net.features[:2](tile)
    assert second.shape[-1] == (32 if arch == "perturbation-cnn2" else 64)
    assert model.net.features(tile).shape[-1] == 16  # both end at 16 px
