"""The perturbation detector: what it trains on, that it learns to see a perturbation, how the engine serves
it, and that calibration never sets a threshold on images it trained on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.models import build_model
from worker import calibrate, train_detector
from worker.benign import BENIGN
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine.engine import Engine, EngineError, default_detector_dir


def test_calibration_pool_leaves_out_exactly_the_detectors_images():
    n = 300
    record = {"training": {"seed": 3, "train_images": 50}, "command": "python -m training train --holdout 20"}
    other = {**record, "training": {"seed": 4, "train_images": 60}}
    models = [Bundle(None, record, Path("r")), Bundle(None, other, Path("s"))]
    model_pool, _ = calibrate.unseen_pool(n, models)
    detector = Bundle(None, {"training": {"seed": 9, "pool_images": 70}}, Path("d"))
    pool, note = calibrate.unseen_pool(n, models, detector)
    trained_on = set(calibrate.detector_images(model_pool, 9, 70).tolist())
    assert len(trained_on) == 70 and trained_on <= set(model_pool.tolist())
    assert set(pool.tolist()) == set(model_pool.tolist()) - trained_on
    assert "perturbation detector" in note
    with pytest.raises(ValueError, match="records no training images"):
        calibrate.unseen_pool(n, models, Bundle(None, {}, Path("d")))


def test_benign_copies_are_on_the_grid_and_half_are_mild_noise():
    x = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(0)).mul(255).round().div(255)
    out = train_detector.benign_copies(x, seed=1)
    assert torch.equal(out, out.mul(255).round().div(255))  # saved to 8 bits
    noisy = (out[0::2] - x[0::2]) * 255
    assert noisy.abs().max() <= 15  # sigma at most 3/255: within 5 sigma
    assert (noisy != 0).float().mean() > 0.3  # but really noisy
    assert torch.equal(train_detector.benign_copies(x, seed=1), out)  # repeatable
    others = [name for name in BENIGN if name != "noise"]
    generator = torch.Generator()
    assert torch.equal(out[1:2], BENIGN[others[0]](x[1:2], generator))  # the rest round-robin over BENIGN


def test_fit_learns_to_tell_a_sign_perturbation_from_clean_images():
    """Paired clean and +-16/255 sign-noise images of smooth random patterns: after a short training the
    held-out AUROC is near 1 (an untrained net sits near 0.5)."""
    generator = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(600, 3, 3, 3, generator=generator), size=8, mode="bilinear")
    sign = torch.randint(0, 2, smooth.shape, generator=generator).float() * 2 - 1
    perturbed = (smooth + sign * 16 / 255).clamp(0, 1)
    torch.manual_seed(0)
    model = build_model("perturbation-cnn", 2, [0.5] * 3, [0.25] * 3, width=8)
    before = calib.roc_auc(
        train_detector.logit_scores(model, smooth[500:]), train_detector.logit_scores(model, perturbed[500:])
    )
    train_detector.fit(
        model, smooth[:500], perturbed[:500], epochs=10, lr=0.01, batch_size=50, seed=0, console=Console(quiet=True)
    )
    after = calib.roc_auc(
        train_detector.logit_scores(model, smooth[500:]), train_detector.logit_scores(model, perturbed[500:])
    )
    assert after > 0.97 and after > before + 0.2


def test_engine_serves_minus_log_p_clean_of_the_detector(engine):
    """The served score against a float64 reference computed from the detector's logits."""
    assert engine.detector is not None
    served = Engine(
        engine.robust, engine.standard, None, threads=1, detectors=["perturbation_net"], detector=engine.detector
    )
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    _, scores = served.scores(x)
    with torch.no_grad():
        reference = -F.log_softmax(engine.detector.model(x).double(), dim=1)[:, det.CLEAN_CLASS]
    torch.testing.assert_close(scores["perturbation_net"].double(), reference, rtol=1e-4, atol=1e-6)
    # Confident-clean images keep distinct scores (no rounding of p_clean to 1.0).
    p = torch.tensor([[1.0, 1e-20], [1.0, 1e-25]])
    assert det._minus_log_clean(p)[0] > det._minus_log_clean(p)[1] > 0


def test_engine_without_a_detector_says_how_to_get_one(engine):
    served = Engine(engine.robust, engine.standard, None, threads=1)  # uncalibrated: what it can compute
    assert "perturbation_net" not in {d.name for d in served.detectors}
    with pytest.raises(EngineError, match="worker.train_detector"):
        Engine(engine.robust, engine.standard, None, threads=1, detectors=["perturbation_net"])
    with pytest.raises(EngineError, match="not a perturbation detector"):
        Engine(engine.robust, engine.standard, None, threads=1, detector=engine.standard)


def test_train_detector_command_writes_a_bundle_the_engine_and_calibration_use(bundle_dirs, tiny_tarball, tmp_path):
    robust = shutil.copytree(bundle_dirs[0], tmp_path / "robust")
    shutil.rmtree(default_detector_dir(robust))
    args = ["--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
            "--n", "20", "--epochs", "2", "--width", "4", "--batch-size", "8", "--steps", "1", "--threads", "1",
            "--seed", "5"]  # fmt: skip
    assert train_detector.main(args) == 0
    detector = load_bundle(default_detector_dir(robust))
    assert detector.metadata["classes"] == ["clean", "adversarial"]
    assert detector.metadata["command"].startswith("python -m worker.train_detector --robust")
    assert detector.metadata["training"]["pool_images"] == 20 and detector.metadata["training"]["seed"] == 5
    assert detector.metadata["for_bundles"]["robust"] == load_bundle(robust).version
    assert {"holdout_auroc", "holdout_tpr", "holdout_benign_flag_rate"} <= set(detector.metadata["metrics"])
    engine = Engine.from_bundles(robust, bundle_dirs[1], threads=1)  # found in its default place
    assert engine.detector.version == detector.version
    # Calibration then keeps to images the detector never saw and names the detector it was fitted with.
    assert calibrate.main([
        "--robust", str(robust), "--standard", str(bundle_dirs[1]), "--data-dir", str(tiny_tarball),
        "--n-clean", "12", "--n-adv", "6", "--steps", "1", "--threads", "1", "--measure", "kl_rs",
    ]) == 0  # fmt: skip
    artefact = calib.load(calib.default_path(robust))
    assert artefact.bundles["detector"] == detector.version and "perturbation_net" in artefact.detectors
    assert "nor the perturbation detector" in artefact.data["pool"]
    served = Engine.from_bundles(robust, bundle_dirs[1], threads=1)
    verdict = served.analyse_tensor(torch.rand(1, 3, 8, 8))[0]
    assert "perturbation_net" in verdict.scores and verdict.flagged is not None
