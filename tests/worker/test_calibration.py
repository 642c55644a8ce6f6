"""Thresholds for a target false-positive rate, the artefact, and the calibrate command."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.bundle import Bundle
from training.data import ArrayDataset, load_splits, split_holdout
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine import native
from worker.engine.engine import Engine, EngineError
from worker.research import calibrate, calibration_sets, delivery, operating_point, pools
from worker.research.delivery import BENIGN


def test_threshold_hits_the_target_fpr_exactly_on_distinct_scores():
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for target in (0.01, 0.05, 0.1):
        threshold = calib.threshold_for_fpr(scores, target)
        assert calib.flag_rate(scores, threshold) == pytest.approx(target)


def test_threshold_never_exceeds_the_target_with_ties_or_few_samples():
    tied = torch.tensor([0.0] * 95 + [1.0] * 5)
    assert calib.flag_rate(tied, calib.threshold_for_fpr(tied, 0.01)) <= 0.01
    few = torch.arange(10.0)
    assert calib.flag_rate(few, calib.threshold_for_fpr(few, 0.01)) == 0.0


def test_operating_threshold_keeps_every_group_at_or_below_the_target_and_no_higher_than_needed():
    generator = torch.Generator().manual_seed(1)
    clean = torch.randn(1000, generator=generator)
    groups = {"noise": torch.randn(500, generator=generator) + 1.0, "jpeg": torch.randn(300, generator=generator)}
    threshold = calib.operating_threshold(clean, groups, 0.01)
    assert all(calib.flag_rate(g, threshold) <= 0.01 for g in [clean, *groups.values()])
    # The noisier group sets it: one step lower would flag more than 1% of those images.
    noise = groups["noise"].sort(descending=True).values
    assert threshold == pytest.approx(float(noise[5])) and calib.flag_rate(noise, float(noise[6])) > 0.01
    assert calib.operating_threshold(clean, None, 0.01) == calib.threshold_for_fpr(clean, 0.01)
    assert calib.operating_threshold(clean, {"empty": torch.empty(0)}, 0.01) == calib.threshold_for_fpr(clean, 0.01)


def test_roc_auc_and_upper_bound():
    assert calib.roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert calib.roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert calib.roc_auc([1, 1], [1, 1]) == 0.5
    bound = calib.fpr_upper_bound(5, 500)
    assert 0.01 < bound < 0.03


def test_unseen_pool_excludes_exactly_what_the_trainer_trained_on():
    n = 200
    record = {"training": {"seed": 3, "train_images": 50}, "command": "python -m training train --holdout 20"}
    other = {**record, "training": {"seed": 4, "train_images": 60}}
    bundles = [Bundle(None, record, Path("r")), Bundle(None, other, Path("s"))]
    pool, _ = pools.unseen_pool(n, bundles)
    data = ArrayDataset(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n), ["x"])
    used = set()
    for seed, count in ((3, 50), (4, 60)):
        train, _ = split_holdout(data, 20, seed)
        used |= set(train.labels[:count].tolist())
    assert set(pool.tolist()) == set(range(n)) - used
    no_record = [Bundle(None, {}, Path("x"))]
    assert len(pools.unseen_pool(n, no_record)[0]) == n


def test_every_benign_version_gives_each_kind_every_image_in_blocks():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(3)]
    images = [delivery.from_array(a) for a in arrays]
    changed, names = calibration_sets.every_benign_version(images, seed=1)
    assert names == [kind for kind in BENIGN for _ in images]
    # block k, item i is kind k applied to image i, with the random draws taken in that order
    draws = random.Random(1)
    expected = [change(image, draws) for change in BENIGN.values() for image in images]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(changed, expected, strict=True))
    assert any(a.size != images[i % 3].size for i, a in enumerate(changed))  # resize-down did resize


@pytest.fixture(scope="module")  # the tests that use it are marked slow: the fit alone takes about 10 s
def fitted(bundle_dirs, tiny_tarball, web_set):
    """A calibration of the tiny bundles on the tiny data set and web images, with every detector measured."""
    robust, standard = bundle_dirs
    engine = Engine.from_bundles(robust, standard, threads=1, max_batch=32, detectors=list(det.CATALOGUE))
    splits = load_splits("imagefolder", tiny_tarball)
    pool, _ = pools.unseen_pool(len(splits.train), [engine.robust, engine.standard], engine.detector)
    keep = list(det.DEFAULT_DETECTORS)
    web = pools.load_web_split(web_set, "calibration", engine.limits)
    artefact, table = calibrate.run_calibration(
        engine, splits.train, pool, web, n_clean=24, n_adv=18, detectors=keep, n_web_adv=2, target_fpr=0.1,
        steps=2, batch=32,
    )  # fmt: skip
    return engine, splits, pool, web, artefact, table


@pytest.mark.slow
def test_drawn_patterns_fit_the_combiner_but_never_set_the_threshold(fitted):
    """Held-out drawn patterns are scored apart (reported), not among the held-out web images, their benign
    changes or thumbnails; fitting-half patterns stay negatives of the combiner's fit."""
    from rich.console import Console

    engine, splits, pool, web, _artefact, _table = fitted
    names = (f"drawn:pattern-{i:04d}" for i in range(100))
    fits = calibration_sets.fitting_sources
    held_name = next(n for n in names if not fits([dataclasses.replace(web[0][0], source=n)])[0])
    drawn = [(dataclasses.replace(r, source=held_name), image) for r, image in web if r.kind == "pattern"]
    natural = [(r, image) for r, image in web if r.kind != "pattern"]
    assert drawn and natural
    sets = calibration_sets.collect(
        engine, splits.train, pool, natural + drawn, n_clean=4, n_adv=2, n_web_adv=1, seed=0, steps=1, batch=32,
        console=Console(quiet=True),
    )  # fmt: skip
    held_natural = sum(not calibration_sets.fitting_sources([r])[0] for r, _image in natural)
    assert len(sets.web_drawn_held.probs) == len(drawn)
    assert len(sets.web_clean_held.probs) == held_natural and len(sets.web_small_held.probs) == held_natural
    assert len(sets.web_benign_held.probs) == held_natural * len(BENIGN) == len(sets.web_benign_names)
    fitting = sum(calibration_sets.fitting_sources([r])[0] for r, _image in natural)
    assert len(sets.web_clean_fit.probs) == fitting  # the held-out patterns fit nothing either


@pytest.mark.slow
def test_calibration_meets_its_target_on_the_data_it_was_set_on(fitted):
    engine, splits, pool, web, artefact, table = fitted
    assert artefact.measured_fpr <= artefact.target_fpr == 0.1
    assert artefact.n_threshold == 12
    # Recompute the held-out clean scores from scratch (the same deliveries) and check the stored threshold.
    order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))]
    clean, _ = calibration_sets.delivered(delivery.to_images(splits.train.images[order[:24]].float() / 255), 0)
    _, scores = engine.score_images(clean[12:])
    combined = artefact.combined(scores, native.tiled(clean[12:]))
    assert calib.flag_rate(combined, artefact.threshold) == pytest.approx(artefact.measured_fpr)
    assert set(artefact.detector_thresholds) == set(artefact.detectors)
    assert "combined" in table and all(0 <= row["auroc_cifar"] <= 1 for row in table.values())
    # The operating point keeps held-out web images and every benign change at or below the target too.
    # CIFAR-10 images and the web thumbnails are the population without native tiles, the web crops as served
    # the one with them; the thumbnails are a group, the crops a benign change shrank under 64 px "web small".
    # Groups under 1 / target images are pooled, within their family first ("a + b").
    benign = artefact.evaluation["benign_flag_rate"]
    untiled = {"cifar clean", "web thumbnail", *(f"cifar {kind}" for kind in BENIGN)}
    tiled = {"web-clean", *(f"web {kind}" for kind in BENIGN)}
    parts = {part for name in benign for part in name.split(" + ")}
    assert untiled <= parts and "web-clean" in parts and parts <= untiled | {"web small"} | tiled
    assert not any(set(name.split(" + ")) & (untiled | {"web small"}) and set(name.split(" + ")) & tiled
                   for name in benign)  # fmt: skip
    assert all(rate <= artefact.target_fpr for rate in benign.values())
    # every held-out image carries every benign kind into its population's group (not one kind per image)
    counts = artefact.data["threshold_groups"]
    n_untiled = sum(n for name, n in counts.items() if set(name.split(" + ")) & (untiled | {"web small"}))
    held_web = sum(not calibration_sets.fitting_sources([record])[0] for record, _image in web)
    assert n_untiled >= 12 * (1 + len(BENIGN)) + held_web  # CIFAR-10 clean and changed, a thumbnail of each photo
    # Web images set the threshold from sources the fit never saw; the artefact records the data and the
    # domain model that decides "no confident class".
    fit_sources = {r.source for r, _ in web if calibration_sets.fitting_sources([r])[0]}
    held_sources = {r.source for r, _ in web} - fit_sources
    assert fit_sources and held_sources and "calibration split" in artefact.data["web"]
    assert artefact.domain is not None and 0 < artefact.domain.keep <= 1


@pytest.mark.slow
def test_artefact_round_trips_and_rejects_other_bundles_or_edits(fitted, tmp_path):
    engine, *_, artefact, _ = fitted
    assert artefact.domain is not None
    path = calib.save(artefact, tmp_path / "calibration.json")
    loaded = calib.load(path)
    assert loaded == artefact and len(loaded.version) == 16
    assert loaded.bundles == {"robust": engine.robust.version, "standard": engine.standard.version,
                              "detector": engine.detector.version}  # fmt: skip
    loaded.check_bundles(engine.robust.version, engine.standard.version, engine.detector.version)
    with pytest.raises(calib.CalibrationError, match="fitted for bundles"):  # the detector is part of the fit
        loaded.check_bundles(engine.robust.version, engine.standard.version)
    with pytest.raises(calib.CalibrationError, match="fitted for bundles"):
        calib.load(path, engine.robust.version, "0000000000000000")
    with pytest.raises(calib.CalibrationError, match="fitted for bundles"):
        Engine(engine.standard, engine.robust, loaded, threads=1)  # swapped roles
    document = json.loads(path.read_text())
    document["threshold"] -= 1.0
    path.write_text(json.dumps(document))
    with pytest.raises(calib.CalibrationError, match="content hash"):
        calib.load(path)


@pytest.mark.slow
def test_calibrated_engine_flags_by_the_threshold(fitted):
    engine, *_, artefact, _ = fitted
    served = Engine(engine.robust, engine.standard, artefact, threads=1, detector=engine.detector)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for verdict in served.analyse_tensor(x):
        assert verdict.calibration_version == artefact.version
        assert verdict.flagged == (verdict.combined > artefact.threshold)
        assert set(verdict.scores) == set(artefact.detectors)
    with pytest.raises(EngineError, match="detectors differ"):
        Engine(engine.robust, engine.standard, artefact, threads=1, detectors=["kl_rs"], detector=engine.detector)


@pytest.mark.slow
def test_calibrate_command_writes_beside_the_bundle(bundle_dirs, tiny_tarball, web_set, tmp_path, capsys):
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n-clean", "20", "--n-adv", "10", "--steps", "1", "--threads", "1", "--measure", "kl_rs",
            "--web-dir", str(web_set), "--n-web-adv", "2"]  # fmt: skip
    code = calibrate.main(args)
    assert code == 0
    artefact = calib.load(calib.default_path(robust))
    assert artefact.data["split"].startswith("train")
    # 10 clean CIFAR-10 images are too few for 1%: measured in the group they were pooled into
    pooled = next(n for n in artefact.data["threshold_groups"] if "cifar clean" in n.split(" + "))
    assert artefact.data["n_threshold_clean"] == artefact.data["threshold_groups"][pooled] > 10
    assert calibrate.main([*args[:-4], "--web-dir", str(tmp_path / "nothing")]) == 2  # says how to build it
    engine = Engine.from_bundles(robust, bundle_dirs[1], threads=1)  # finds it by default
    assert engine.calibration == artefact
    assert np.isfinite(engine.analyse_tensor(torch.rand(1, 3, 8, 8))[0].combined)
    # Re-running with the artefact already in place replaces it (a new seed gives a new fit and version).
    assert calibrate.main([*args, "--seed", "1"]) == 0
    assert calib.load(calib.default_path(robust)).version != artefact.version


def test_calibrate_saves_the_scores_the_threshold_was_set_on(bundle_dirs, tiny_tarball, web_set, tmp_path):
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    scores = tmp_path / "scores.pt"
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n-clean", "20", "--n-adv", "10", "--steps", "1", "--threads", "1", "--measure", "kl_rs",
            "--web-dir", str(web_set), "--n-web-adv", "2", "--scores", str(scores)]  # fmt: skip
    assert calibrate.main(args) == 0
    artefact = calib.load(calib.default_path(robust))
    sets = torch.load(scores, weights_only=False)
    assert len(sets["cifar_clean_held"]["probs"]) == 10 < artefact.data["n_threshold_clean"]  # pooled at 1%
    # The artefact's threshold and offset follow from the saved held-out scores and its own combiner: at
    # ``Calibration.combined``'s scores, each population's worst group sits exactly at the one threshold.
    tiled: dict[str, torch.Tensor] = {}
    untiled: dict[str, torch.Tensor] = {}

    def add(name: str, scored: dict, mask: torch.Tensor | None = None) -> None:
        mask = torch.ones(len(scored["tiled"]), dtype=torch.bool) if mask is None else mask
        combined = artefact.combined(scored["scores"], scored["tiled"])
        for population, part in ((tiled, mask & scored["tiled"]), (untiled, mask & ~scored["tiled"])):
            if part.any():
                population[name] = torch.cat([population.get(name, torch.empty(0, dtype=combined.dtype)),
                                              combined[part]])  # fmt: skip

    add("cifar clean", sets["cifar_clean_held"])
    add("web-clean", sets["web_clean_held"])
    add("web thumbnail", sets["web_small_held"])
    for population in ("cifar", "web"):
        names = sets[f"{population}_benign_names"]
        for kind in set(names):
            add(f"{population} {kind}", sets[f"{population}_benign_held"], torch.tensor([n == kind for n in names]))
    shrunk = [v for k, v in untiled.items() if k.startswith("web") and k != "web thumbnail"]
    untiled = {k: v for k, v in untiled.items() if k.startswith("cifar") or k == "web thumbnail"}
    if shrunk:
        untiled["web small"] = torch.cat(shrunk)
    assert tiled and untiled and not sets["web_small_held"]["tiled"].any()
    for groups in (tiled, untiled):
        groups = operating_point.pool_small_groups(groups, artefact.target_fpr)
        worst = max(calib.threshold_for_fpr(g, artefact.target_fpr) for g in groups.values())
        assert worst == pytest.approx(artefact.threshold)


def test_operating_point_set_again_from_saved_scores(bundle_dirs, tiny_tarball, web_set, tmp_path):
    """``--from-scores`` gives what scoring again would (the same combiner and threshold) at the same target,
    a threshold no lower at a stricter target, and refuses scores of other bundles or without their record."""
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    scores = tmp_path / "scores.pt"
    common = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
              "--threads", "1", "--measure", "kl_rs"]  # fmt: skip
    scored = [*common, "--n-clean", "20", "--n-adv", "10", "--steps", "1", "--web-dir", str(web_set),
              "--n-web-adv", "2", "--target-fpr", "0.2", "--scores", str(scores)]  # fmt: skip
    assert calibrate.main(scored) == 0
    first = calib.load(calib.default_path(robust))
    again, stricter = tmp_path / "again.json", tmp_path / "stricter.json"
    assert calibrate.main([*common, "--from-scores", str(scores), "--target-fpr", "0.2", "--out", str(again)]) == 0
    assert calibrate.main([*common, "--from-scores", str(scores), "--target-fpr", "0.05", "--out", str(stricter)]) == 0
    same = calib.load(again)
    assert dataclasses.replace(same, created=first.created, version=first.version) == first
    assert calib.load(stricter).threshold >= first.threshold and calib.load(stricter).target_fpr == 0.05
    # Scores made with another standard bundle (the robust one standing in) or a file without its record: refused.
    other = [*common[:3], str(robust), *common[4:]]
    assert calibrate.main([*other, "--from-scores", str(scores), "--out", str(tmp_path / "x.json")]) == 2
    bare = tmp_path / "bare.pt"
    torch.save({k: v for k, v in torch.load(scores, weights_only=False).items() if k != "recorded"}, bare)
    assert calibrate.main([*common, "--from-scores", str(bare), "--out", str(tmp_path / "y.json")]) == 2
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


@pytest.mark.slow
def test_images_too_small_for_native_tiles_carry_the_untiled_offset(fitted):
    """The offset moves the combined score of an image under 64 px (read through the model input alone) and
    leaves a photo with tiles as it was; the flag is the shifted score against the one threshold."""
    engine, *_, artefact, _ = fitted
    shifted = dataclasses.replace(artefact, untiled_offset=artefact.untiled_offset + 5.0)
    rng = np.random.default_rng(7)
    files = []
    for side in (40, 96):
        buffer = io.BytesIO()
        delivery.from_array(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
        files.append(buffer.getvalue())
    before, after = (
        Engine(engine.robust, engine.standard, a, threads=1, detector=engine.detector).analyse(files)
        for a in (artefact, shifted)
    )
    assert after[0].combined - before[0].combined == pytest.approx(5.0)
    assert after[1].combined == pytest.approx(before[1].combined)
    assert after[0].scores == before[0].scores and after[0].threshold == artefact.threshold
    assert all(v.flagged == (v.combined > artefact.threshold) for v in after)


def test_groups_too_small_for_the_target_join_the_largest():
    """At 1%, a group of 60 may not have one image above the threshold, so its maximum would set it; merged into
    the largest group it counts at the target rate like the rest, and nothing is lost or moved elsewhere."""
    generator = torch.Generator().manual_seed(3)
    groups = {
        "photos": torch.randn(300, generator=generator),
        "noisy": torch.randn(150, generator=generator),
        "tiny": torch.randn(60, generator=generator) + 3.0,
        "resized": torch.randn(90, generator=generator),
    }
    pooled = operating_point.pool_small_groups(groups, 0.01)
    assert set(pooled) == {"noisy", "photos + tiny + resized"}
    assert torch.equal(pooled["noisy"], groups["noisy"])
    merged = pooled["photos + tiny + resized"]
    assert torch.equal(
        merged.sort().values, torch.cat([groups[k] for k in ("photos", "tiny", "resized")]).sort().values
    )
    assert calib.threshold_for_fpr(groups["tiny"], 0.01) == groups["tiny"].max()  # what it would have set alone
    assert calib.threshold_for_fpr(merged, 0.01) < groups["tiny"].max()
    assert operating_point.pool_small_groups({"tiny": groups["tiny"]}, 0.01).keys() == {"tiny"}  # nothing to join


def test_small_groups_pool_within_their_family_first():
    """Small CIFAR-10 groups pool among themselves before any joins the web photos (whose tail would then run
    above the target); a family still too small together joins the population's largest group."""
    generator = torch.Generator().manual_seed(4)
    groups = {"web small": torch.randn(300, generator=generator)}
    groups |= {f"cifar {kind}": torch.randn(60, generator=generator) for kind in ("clean", "noise-4")}
    pooled = operating_point.pool_small_groups(groups, 0.01)
    assert pooled.keys() == {"web small", "cifar clean + cifar noise-4"}
    assert torch.equal(pooled["web small"], groups["web small"])
    assert len(pooled["cifar clean + cifar noise-4"]) == 120
    fewer = {name: scores[:30] if name.startswith("cifar") else scores for name, scores in groups.items()}
    assert operating_point.pool_small_groups(fewer, 0.01).keys() == {"web small + cifar clean + cifar noise-4"}
