"""``python -m training train`` with the Jacobian-term options, end to end on the tiny tarball."""

from __future__ import annotations

import pytest

from tests.support.training_cli import run_cli
from training import bundle

pytestmark = pytest.mark.slow  # a training run of the CLI in a subprocess


def test_train_records_the_jacobian_options(tiny_tarball, tmp_path):
    out = tmp_path / "fd"
    result = run_cli(
        "train", "--method", "otjr", "--jr-mode", "finite-difference", "--jr-step", "0.002", "--jr-fraction", "0.5",
        "--dataset", "imagefolder", "--data-dir", str(tiny_tarball), "--out", str(out), "--epochs", "1",
        "--batch-size", "16", "--holdout", "8", "--holdout-eval", "8", "--width", "0.0625", "--attack-steps", "1",
        "--n-projections", "4", "--device", "cpu", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
        cache=tmp_path / "xdg",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hyper = bundle.load(out / "best").metadata["hyperparameters"]
    assert hyper["jr_mode"] == "finite-difference" and hyper["jr_fraction"] == 0.5
    assert hyper["jr_step"] == pytest.approx(0.002) and hyper["terms_precision"] == "fp32"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--jr-fraction", "0"], "jr_fraction must be in (0, 1]"),
        (["--jr-mode", "finite-difference", "--terms-precision", "autocast"], "needs terms_precision='fp32'"),
    ],
)
def test_train_rejects_bad_jacobian_options(tmp_path, flags, message):
    result = run_cli("train", "--method", "otjr", "--out", str(tmp_path / "x"), *flags, cache=tmp_path)
    assert result.returncode == 2 and message in result.stderr
