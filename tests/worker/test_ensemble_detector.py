"""Detector ensembles (worker/research/ensemble_detector.py): trained pair detectors averaged into one bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.support.models import INPUT_SIZE, MEAN, STD
from training import bundle
from training.bundle import load as load_bundle
from training.models import build_model
from worker.engine import native
from worker.engine.engine import Engine
from worker.research import delivery
from worker.research.ensemble_detector import EnsembleError, build_ensemble, main
from worker.research.pools import SEEN_POOL


def make_pair_bundle(directory: Path, robust: Path, standard: Path, width: int, seed: int, **changes) -> Path:
    """A pair detector with non-trivial batch norms, for the tiny bundles (``changes`` edit its metadata)."""
    torch.manual_seed(seed)
    model = build_model("perturbation-pair", 2, MEAN, STD, width).train()
    with torch.no_grad():
        model(torch.rand(8, *INPUT_SIZE))
    versions = {"robust": load_bundle(robust).version, "standard": load_bundle(standard).version}
    metadata = {
        "arch": "perturbation-pair", "width": width, "num_classes": 2, "classes": ["clean", "adversarial"],
        "input_size": INPUT_SIZE, "tile": native.TILE, "mean": MEAN, "std": STD,
        "method": "perturbation-detector", "dataset": "imagefolder", "for_bundles": versions,
        "training": {
            "kind": "perturbation-detector", "pool_kind": SEEN_POOL, "deliveries": "png, jpeg90",
            "attack_sources": [{"arch": "mobilenetv2", "version": f"source{seed}"}],
        },
        "command": f"python -m worker.research.train_detector --width {width}", "metrics": {"tiles": {"auroc": 0.8}},
    }  # fmt: skip
    return bundle.save(model.eval(), metadata | changes, directory)


@pytest.fixture
def members(bundle_dirs, tmp_path) -> list[Path]:
    robust, standard = bundle_dirs
    return [
        make_pair_bundle(tmp_path / "narrow", robust, standard, width=4, seed=1),
        make_pair_bundle(tmp_path / "wide", robust, standard, width=8, seed=2),
    ]


def test_the_ensemble_scores_the_mean_of_its_members_logits(members, tmp_path):
    loaded = [load_bundle(m) for m in members]
    ensemble = build_ensemble(loaded, tmp_path / "ensemble", "test")
    x = torch.rand(5, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = (loaded[0].model(x) + loaded[1].model(x)) / 2
        torch.testing.assert_close(ensemble.model(x), expected)
    assert ensemble.metadata["width"] == [4, 8]
    assert [m["version"] for m in ensemble.metadata["members"]] == [b.version for b in loaded]
    sources = ensemble.metadata["training"]["attack_sources"]
    assert sorted(s["version"] for s in sources) == ["source1", "source2"]


def test_the_engine_serves_an_ensemble_as_its_perturbation_detector(bundle_dirs, members, tmp_path):
    robust, standard = bundle_dirs
    assert main(["--member", str(members[0]), "--member", str(members[1]), "--out", str(tmp_path / "ens")]) == 0
    engine = Engine.from_bundles(robust, standard, calibration_path=None, threads=1, detector_dir=tmp_path / "ens")
    pixels = [np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8) for seed, size in
              ((0, 8), (1, 130))]  # fmt: skip
    x = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in pixels[:1]])
    tiles, owner = native.native_tiles(pixels[1:])
    _probs, scores = engine.scores(x, tiles, torch.zeros_like(owner))
    loaded = [load_bundle(m) for m in members]
    with torch.no_grad():  # per view, the members' mean; per image, the larger of the input's and the tiles' mean
        on_input = torch.stack([native.adversarial_logit(b.model, x) for b in loaded]).mean(0)
        on_tiles = torch.stack([native.adversarial_logit(b.model, tiles) for b in loaded]).mean(0).mean()
    expected = F.softplus(torch.maximum(on_input, on_tiles))
    torch.testing.assert_close(scores["perturbation_net"], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"for_bundles": {"robust": "other", "standard": "other"}}, "differ in for_bundles"),
        ({"arch": "perturbation-cnn", "width": 4}, "not perturbation-pair"),
        ({"training": {"pool_kind": "unseen", "deliveries": "png"}}, "models' own training images"),
    ],
)
def test_members_that_cannot_be_averaged_are_refused(bundle_dirs, members, tmp_path, change, message):
    robust, standard = bundle_dirs
    if change.get("arch") == "perturbation-cnn":
        torch.manual_seed(0)
        odd_model = build_model("perturbation-cnn", 2, MEAN, STD, 4)
        metadata = {**load_bundle(members[0]).metadata, **change}
        metadata.pop("version")
        odd = bundle.save(odd_model, metadata, tmp_path / "odd")
    else:
        odd = make_pair_bundle(tmp_path / "odd", robust, standard, width=4, seed=3, **change)
    with pytest.raises(EnsembleError, match=message):
        build_ensemble([load_bundle(members[0]), load_bundle(odd)], tmp_path / "ens", "test")
    assert not (tmp_path / "ens").exists()


def test_one_member_is_not_an_ensemble_and_the_command_says_why(members, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--member", str(members[0]), "--out", str(tmp_path / "ens")])
    assert exit_info.value.code == 2
    assert "at least two member detectors" in capsys.readouterr().err


def test_a_member_without_a_deliveries_record_counts_as_trained_on_every_delivery(bundle_dirs, members, tmp_path):
    robust, standard = bundle_dirs
    older = make_pair_bundle(tmp_path / "older", robust, standard, width=4, seed=4,
                             training={"kind": "perturbation-detector", "pool_kind": SEEN_POOL})  # fmt: skip
    ensemble = build_ensemble([load_bundle(members[0]), load_bundle(older)], tmp_path / "ens", "test")
    assert sorted(ensemble.metadata["training"]["deliveries"].split(", ")) == sorted(delivery.DELIVERIES)
