"""The detection evaluation: metrics against references, the adaptive attack's pieces, and the command."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

from tests.support.models import make_bundle
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine.engine import Engine
from worker.research import (
    adaptive_attack,
    calibrate,
    cifar_evaluation,
    detection_metrics,
    detection_report,
    evaluate,
    web_evaluation,
)
from worker.research.delivery import quantise


def brute_force_auroc(negatives, positives) -> float:
    pairs = list(itertools.product(negatives, positives))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for n, p in pairs) / len(pairs)


def test_auroc_matches_the_pair_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        neg, pos = rng.integers(0, 6, 23), rng.integers(2, 9, 17)  # many ties
        assert detection_metrics.auroc(neg, pos) == pytest.approx(brute_force_auroc(neg, pos))
    assert detection_metrics.auroc([0, 1], [2, 3]) == 1.0 and detection_metrics.auroc([2, 3], [0, 1]) == 0.0


def test_roc_curve_runs_from_origin_to_one_and_its_area_is_the_auroc():
    rng = np.random.default_rng(1)
    neg, pos = rng.integers(0, 10, 40).astype(float), rng.normal(6, 3, 30).round()
    fpr, tpr = detection_metrics.roc_curve(neg, pos)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert detection_metrics.trapezoid_area(fpr, tpr) == pytest.approx(brute_force_auroc(neg, pos))


def test_tpr_at_fpr_on_hand_made_scores():
    clean = np.arange(100.0)  # at 1% FPR only 99 may exceed the threshold (98); at 5%, 95..99 (threshold 94)
    adversarial = np.array([97.5, 98.0, 98.5, 99.5])
    assert detection_metrics.tpr_at_fpr(clean, adversarial, 0.01) == 0.5
    assert detection_metrics.tpr_at_fpr(clean, adversarial, 0.05) == 1.0
    assert detection_metrics.tpr_at_fpr(clean, [0.0, 200.0], 0.01) == 0.5
    stats = detection_metrics.detection_stats(clean, adversarial, threshold=99.0)
    assert stats["flag_rate"] == 0.25 and stats["tpr_at_1pct_fpr"] == 0.5 and 0.9 < stats["auroc"] <= 1


def test_attack_names_are_parsed_and_checked():
    specs = cifar_evaluation.parse_attacks("pgd-8-t,cw-4-s,l2-0.5-t,square,adaptive-16", "standard", "robust")
    assert [(s.name, s.objective, s.budget, s.target) for s in specs] == [
        ("pgd-8-t", "pgd", 8, "transfer"),
        ("cw-4-s", "cw", 4, "standard"),
        ("l2-0.5-t", "l2", 0.5, "transfer"),
        ("square-8", "square", 8, "standard"),
        ("adaptive-16", "adaptive", 16, "robust"),
    ]
    assert [s.eps for s in specs[:3]] == [8 / 255, 4 / 255, 0.5]  # L2 radii are not in 1/255
    assert [s.eps_text for s in specs[1:3]] == ["4/255", "L2 0.5"]
    default = cifar_evaluation.parse_attacks("default", "standard", "standard")
    assert [s.name for s in default] == list(cifar_evaluation.DEFAULT_ATTACKS)
    for bad in ("pgd-8", "fgsm-8-s", "pgd-8-s,pgd-8-s"):
        with pytest.raises(ValueError):
            cifar_evaluation.parse_attacks(bad, "standard", "standard")


@pytest.fixture(scope="module")
def calibrated(bundle_dirs, tiny_tarball, web_set, tmp_path_factory):
    """A copy of the tiny robust bundle with a calibration artefact beside it (default detectors)."""
    robust = shutil.copytree(bundle_dirs[0], tmp_path_factory.mktemp("calibrated") / "robust")
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n-clean", "20", "--n-adv", "10", "--steps", "1", "--threads", "1", "--measure", "kl_rs",
            "--web-dir", str(web_set), "--n-web-adv", "2"]  # fmt: skip
    assert calibrate.main(args) == 0
    return robust, bundle_dirs[1]


def test_differentiable_scores_equal_the_served_ones(bundle_dirs):
    """Every detector of the catalogue, BPDA ones included, has the served value in the forward pass."""
    engine = Engine.from_bundles(*bundle_dirs, threads=1, detectors=list(det.CATALOGUE))
    x = quantise(torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3)))
    _, served = engine.scores(x)
    x.requires_grad_(True)
    scores = adaptive_attack.differentiable_scores(engine, x)
    for name, value in served.items():
        assert torch.allclose(scores[name].detach(), value, atol=1e-5), name
    (grad,) = torch.autograd.grad(sum(s.sum() for s in scores.values()), x)
    assert grad.abs().sum() > 0


def test_adaptive_attack_stays_on_the_grid_in_the_ball(calibrated):
    engine = Engine.from_bundles(*calibrated, threads=1)
    combiner = engine.calibration.combiner
    x = quantise(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(4)))
    served = combiner.logit(engine.scores(x)[1])
    differentiable = adaptive_attack.differentiable_combined(combiner, adaptive_attack.differentiable_scores(engine, x))
    assert torch.allclose(differentiable.double(), served, atol=1e-4)
    y = torch.tensor([0, 1, 0, 1])
    eps = 8 / 255
    with torch.enable_grad():
        adv = adaptive_attack.adaptive_attack(engine, engine.standard.model, x, y, eps, steps=2, lam=1.0)
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert torch.allclose(adv * 255, (adv * 255).round(), atol=1e-4)


@pytest.mark.slow
def test_evaluate_command_writes_the_report_and_plots(calibrated, tiny_tarball, web_set, tmp_path):
    robust, standard = calibrated
    transfer = make_bundle(tmp_path / "transfer", 3, "standard")
    out = tmp_path / "results"
    args = ["--robust", str(robust), "--standard", str(standard), "--transfer-source", str(transfer),
            "--data-dir", str(tiny_tarball), "--n", "16", "--out", str(out), "--threads", "1",
            "--attacks", "pgd-8-s,cw-8-r,pgd-4-t,pgd-8-t,l2-1-t,square-8,adaptive-8", "--benign", "jpeg-q50-95,noise-4",
            "--steps", "2", "--square-queries", "5", "--adaptive-steps", "2", "--batch-size", "8",
            "--deliveries", "png,jpeg90", "--web-dir", str(web_set), "--n-web-attack", "2"]  # fmt: skip
    assert evaluate.main(args) == 0
    document = json.loads((out / "detection.json").read_text())
    assert document["n"] == 16 and document["data"]["split"] == "test"
    assert document["calibration"]["version"] == calib.load(calib.default_path(robust)).version
    assert document["models"]["transfer_source"]["version"] not in document["models"]["model_version"]
    assert set(document["attacks"]) == {"pgd-8-s", "cw-8-r", "pgd-4-t", "pgd-8-t", "l2-1-t", "square-8", "adaptive-8"}
    assert document["attacks"]["l2-1-t"]["eps"] == "L2 1" and document["attacks"]["pgd-8-t"]["eps"] == "8/255"
    assert set(document["benign"]) == {"jpeg-q50-95", "noise-4"}
    for record in document["attacks"].values():
        for key in ("auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "flag_rate", "success_rate", "fooled_and_unflagged"):
            assert 0 <= record[key] <= 1, key
        assert record["n"] == 16 and set(record["detectors_auroc"]) == set(det.DEFAULT_DETECTORS)
    assert document["attacks"]["square-8"]["queries"] == 5
    assert set(document["attacks"]["adaptive-8"]["differentiable"].values()) == {"exact"}
    assert all(0 <= r["flag_rate"] <= 1 for r in document["benign"].values())
    assert 0 <= document["clean"]["flag_rate"] <= 1
    # Every non-adaptive attack is scored again after each delivery, with a Wilson interval around the rate.
    for name, record in document["attacks"].items():
        if name != "adaptive-8":
            assert set(record["delivered"]) == {"png", "jpeg90"}
            flagged = record["delivered"]["png"]["flagged"]
            assert flagged["n"] == 16 and flagged["ci95"][0] <= flagged["rate"] <= flagged["ci95"][1]
    # The PNG delivery is the image as attacked: the same flag rate as the attack's own record.
    pgd = document["attacks"]["pgd-8-s"]
    assert pgd["delivered"]["png"]["flagged"]["rate"] == pgd["flag_rate"]
    web = document["web"]
    assert web["n"] == 8 and set(web["clean"]) == {"all", "astronomy", "page", "stamp", "wallpaper"}
    # drawn patterns are reported apart, never among the ordinary images
    assert set(web["drawn"]) == {"pattern"} and web["drawn"]["pattern"]["flagged"]["n"] == 2
    false_flags = web["clean"]["all"]["flagged_images"]  # each false flag named, with its source picture
    assert len(false_flags) == web["clean"]["all"]["flagged"]["k"]
    assert all(f["score"] > document["calibration"]["threshold"] and f["source"] for f in false_flags)
    pictures = web["clean"]["all"]["pictures_flagged"]  # the same false flags counted per source picture
    assert pictures["k"] == len({f["source"] for f in false_flags}) and 0 < pictures["n"] <= 8
    # the web benign changes asked for, and the thumbnails (the population without native tiles) always
    assert set(web["benign"]) == {"jpeg-q50-95", "noise-4", "thumbnail"}
    assert web["benign"]["thumbnail"]["flagged"]["n"] == 8
    assert set(web["attacks"]) == {a.name for a in web_evaluation.WEB_ATTACKS}
    assert all(r["n"] == 2 and set(r["delivered"]) == {"png", "jpeg90"} for r in web["attacks"].values())
    targets = document["targets"]
    assert "web PGD-8 at native resolution, PNG" in targets and "web images flagged (95% upper bound)" in targets
    assert targets["cifar transferred CW-8, PNG"]["met"] is None  # cw-8-t was not run: not measured, not failed
    assert all(isinstance(t["met"], bool) for name, t in targets.items() if "CW-8, PNG" not in name or "web" in name)
    for name in ("detection_roc.png", "detection_scores.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_refuses_without_calibration_or_transfer_source(bundle_dirs, calibrated, tiny_tarball):
    base = ["--data-dir", str(tiny_tarball), "--n", "4", "--threads", "1", "--no-web", "--attacks", "pgd-2-s"]
    assert evaluate.main(["--robust", str(bundle_dirs[0]), "--standard", str(bundle_dirs[1]), *base]) == 2
    robust, standard = calibrated
    without_source = [*base[:-1], "pgd-2-t"]
    assert evaluate.main(["--robust", str(robust), "--standard", str(standard), *without_source]) == 2


def test_drawn_patterns_count_among_the_benign_kinds_of_the_targets():
    """A benign kind over 1% fails the target whether it is a change of the photos or the drawn patterns."""

    def flagged(rate: float) -> dict:
        return {"flagged": {"rate": rate, "ci95": [0.0, rate + 0.005]}}

    report = {
        "attacks": {},
        "benign": {"noise-4": {"flagged": {"rate": 0.004}}},
        "web": {
            "clean": {"all": flagged(0.002)},
            "benign": {"gamma": flagged(0.008)},
            "attacks": {},
            "drawn": {"pattern": flagged(0.03)},
        },
    }
    targets = detection_report.check_targets(report)
    assert targets["worst benign change (drawn patterns)"] == {"target": "<= 0.01", "value": 0.03, "met": False}
    report["web"]["drawn"]["pattern"] = flagged(0.0)
    assert detection_report.check_targets(report)["worst benign change (web gamma)"]["met"] is True
