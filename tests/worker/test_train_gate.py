"""Training the domain gate: its data (which pictures are outliers), resumable training, calibration, and a
whole run on the tiny bundles whose bundle the engine then serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from worker.engine import domain_gate
from worker.engine.engine import Engine
from worker.research import gate_data, train_gate
from worker.research.gate_evaluation import keep_threshold
from worker.research.web_images import WebImage


def record(source: str, kind: str) -> WebImage:
    return WebImage("f.png", "test", source, kind, "p", "l", 64, 64, "PNG")


def test_pictures_that_show_a_class_are_not_outliers():
    stamps = {
        "tuxpaint-stamps-default:cat": "animals/mammals/kitten.png",
        "tuxpaint-stamps-default:sun": "space/sun.png",
    }
    assert gate_data.shows_a_class(record("tuxpaint-stamps-default:cat", "stamp"), stamps)
    assert not gate_data.shows_a_class(record("tuxpaint-stamps-default:sun", "stamp"), stamps)
    assert gate_data.shows_a_class(record("lomiri-wallpapers-20.04:Kleiber_by_Lukas_Baubkus", "wallpaper"), stamps)
    assert not gate_data.shows_a_class(record("mate-backgrounds:Dune", "wallpaper"), stamps)
    assert not gate_data.shows_a_class(record("rendered:page-0001", "page"), stamps)


def test_inliers_are_served_at_32_px_and_larger_and_the_targets_upscaled_set_is_96_to_128_px():
    image = Image.new("RGB", (32, 32), (120, 40, 200))
    served = [gate_data.served_inlier(image, gate_data.seeded("t", i)) for i in range(60)]
    longest = {max(im.size) for im in served}
    assert 32 in longest and max(longest) > 256 and all(40 <= s <= 800 for s in longest - {32})
    assert any(im.width != im.height for im in served)  # laid out oblong too: the shape says nothing
    larger = [gate_data.shown_larger(image, gate_data.seeded("l", i)) for i in range(20)]
    assert all(96 <= im.width <= 128 and im.width == im.height for im in larger)


def _separable(n: int, shift: float, seed: int) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)) + shift


def test_training_resumes_where_it_stopped(tmp_path):
    inside, outside = _separable(200, 1.0, 0), _separable(150, -1.0, 1)
    settings = {"hidden": 8, "lr": 5e-2, "weight_decay": 1e-2, "seed": 3}
    straight = train_gate.train_net(inside, outside, epochs=4, checkpoint=tmp_path / "a.pt", log=str, **settings)
    train_gate.train_net(inside, outside, epochs=4, checkpoint=tmp_path / "b.pt", log=str, **settings)
    state = torch.load(tmp_path / "b.pt")
    # A run cut short after two of its four epochs, then resumed.
    train_gate.train_net(inside, outside, epochs=4, checkpoint=tmp_path / "c.pt", log=str, stop_after=2, **settings)
    assert torch.load(tmp_path / "c.pt")["epoch"] == 2
    resumed = train_gate.train_net(inside, outside, epochs=4, checkpoint=tmp_path / "c.pt", log=str, **settings)
    assert state["epoch"] == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    with torch.no_grad():  # and it learnt the task
        assert (straight(inside) > 0).double().mean() > 0.9 and (straight(outside) < 0).double().mean() > 0.9


def test_platt_scaling_gives_probabilities_and_the_threshold_keeps_the_stated_share():
    inside, outside = torch.randn(500) * 2 + 3, torch.randn(500) * 2 - 3
    platt = train_gate.fit_platt(inside, outside)
    p_in, p_out = domain_gate.calibrated(inside, platt), domain_gate.calibrated(outside, platt)
    assert platt["scale"] > 0 and 0.85 < p_in.mean() < 0.99 and 0.01 < p_out.mean() < 0.15
    threshold = keep_threshold(p_in, 0.9)
    assert (p_in >= threshold).double().mean() == pytest.approx(0.9, abs=0.002)
    assert keep_threshold(torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.5) == pytest.approx(0.3)


def test_a_whole_run_writes_a_gate_the_engine_serves_and_resumes_from_its_cache(
    bundle_dirs, tiny_tarball, web_set, tmp_path, capsys
):
    robust = Path(shutil.copytree(bundle_dirs[0], tmp_path / "robust"))
    argv = [
        "--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
        "--web-dir", str(web_set), "--work", str(tmp_path / "work"), "--results", str(tmp_path / "gate.json"),
        "--n-cifar", "16", "--epochs", "3", "--hidden", "4", "--cues", "all", "--ablation",
        "--cache-dir", str(tmp_path / "data-cache"),
    ]  # fmt: skip
    assert train_gate.main(argv) == 0
    first = capsys.readouterr().out
    assert "chunk" in first
    results = json.loads((tmp_path / "gate.json").read_text())
    cue_sets = {"none", "size", "native", "all"}
    assert set(results["by_variant"]) == cue_sets | {f"{c}+standard" for c in cue_sets}
    web = results["by_variant"]["all"]["test"]["web"]["web"]
    assert web["ordinary_showing_no_class"]["n"] > 0 and set(web["by_kind"]) >= {"wallpaper", "page"}
    assert results["cost_ms_per_image"]["robust_forward"] > 0
    gate = domain_gate.load(robust / "domain-gate")
    assert gate.cues == domain_gate.CUES and gate.metadata["command"].startswith("python -m worker.research.train_gate")
    assert 0 < gate.threshold < 1
    assert gate.metadata["for_bundles"]["robust"] == json.loads((robust / "bundle.json").read_text())["version"]
    engine = Engine.from_bundles(robust, bundle_dirs[1], threads=1)
    verdicts = engine.analyse_tensor(torch.rand(4, 3, 8, 8))
    assert all((v.label is None) == (v.in_domain < gate.threshold) for v in verdicts)
    assert train_gate.main(argv) == 0  # again: every input read back from the cache, nothing recomputed
    assert "chunk" not in capsys.readouterr().out
