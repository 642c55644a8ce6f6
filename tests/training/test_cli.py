"""``python -m training train|eval`` end to end on a tiny tarball, in subprocesses as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.training_cli import run_cli
from training import bundle

pytestmark = pytest.mark.slow  # training and evaluation runs of the CLI in subprocesses


@pytest.fixture(scope="module")
def trained(tiny_tarball, tmp_path_factory) -> dict[str, Path | str]:
    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "run"
    result = run_cli(
        "train",
        "--method",
        "pgd-at",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(tiny_tarball),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--holdout",
        "8",
        "--holdout-eval",
        "8",
        "--width",
        "0.0625",
        "--attack-steps",
        "1",
        "--eps",
        "4/255",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--cache-dir",
        str(tmp / "cache"),
        cache=tmp / "xdg",
    )
    assert result.returncode == 0, result.stderr
    return {"tmp": tmp, "out": out, "stdout": result.stdout}


def test_train_writes_a_run_folder(trained):
    out = trained["out"]
    assert f"best bundle: {out / 'best'}" in trained["stdout"]
    for name in ("config.json", "metrics.jsonl", "last.pt", "best/bundle.json", "last/weights.safetensors"):
        assert (out / name).exists(), name
    loaded = bundle.load(out / "best")
    assert loaded.metadata["method"] == "pgd-at"
    assert loaded.metadata["eps"] == pytest.approx(4 / 255)
    assert loaded.metadata["hyperparameters"]["attack_steps"] == 1
    assert loaded.metadata["command"].startswith("python -m training train --method pgd-at")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert list((trained["tmp"] / "cache").glob("tiny.tar.gz-*.pt"))


def test_eval_writes_table_json_and_curve(trained, tiny_tarball):
    tmp, out = trained["tmp"], trained["out"]
    eval_dir = tmp / "eval"
    result = run_cli(
        "eval",
        "--bundle",
        str(out / "best"),
        "--data-dir",
        str(tiny_tarball),
        "--attacks",
        "fgsm,pgd5",
        "--n",
        "16",
        "--curve-n",
        "8",
        "--out",
        str(eval_dir),
        "--device",
        "cpu",
        "--threads",
        "1",
        cache=tmp / "xdg",
    )
    assert result.returncode == 0, result.stderr
    for name in ("eval.json", "eval.md", "robustness_curve.png"):
        assert (eval_dir / name).stat().st_size > 0, name
    assert (eval_dir / "robustness_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (result_entry,) = json.loads((eval_dir / "eval.json").read_text())
    assert result_entry["n_eval"] == 16 and result_entry["n_curve"] == 8
    assert result_entry["method"] == "pgd-at"
    assert result_entry["version"] == bundle.load(out / "best").version
    assert result_entry["eps"] == pytest.approx(8 / 255)
    clean = result_entry["clean"]
    assert 0.0 <= clean <= 1.0
    assert set(result_entry["attacks"]) == {"fgsm", "pgd5"}
    for name, robust in result_entry["attacks"].items():
        assert 0.0 <= robust <= clean, name
    curve = result_entry["curve"]
    assert [p["eps"] for p in curve] == ["0", "2/255", "4/255", "8/255", "12/255", "16/255"]
    assert all(0.0 <= p["accuracy"] <= curve[0]["accuracy"] for p in curve)

    table = (eval_dir / "eval.md").read_text()
    assert "| bundle | method | n | clean | fgsm | pgd5 |" in table
    assert "| best | pgd-at | 16 |" in table


def test_unknown_dataset_path_is_a_clear_error(tmp_path):
    result = run_cli(
        "train",
        "--method",
        "standard",
        "--dataset",
        "cifar10",
        "--data-dir",
        "/nonexistent.tar.gz",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        cache=tmp_path,
    )
    assert result.returncode == 2
    assert "error: cifar10 not found under /nonexistent.tar.gz" in result.stderr
    assert "--download" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_imagefolder_without_a_tree_is_a_clear_error(tmp_path):
    result = run_cli(
        "train",
        "--method",
        "standard",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        cache=tmp_path,
    )
    assert result.returncode == 2
    assert "error: --data-dir must be an ImageFolder tree" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_of_a_tampered_bundle_is_a_clear_error(trained, tiny_tarball, tmp_path):
    forged = tmp_path / "forged"
    forged.mkdir()
    meta = json.loads((trained["out"] / "best" / "bundle.json").read_text())
    meta["classes"] = ["dark", "bright"]
    (forged / "bundle.json").write_text(json.dumps(meta))
    (forged / "weights.safetensors").write_bytes((trained["out"] / "best" / "weights.safetensors").read_bytes())
    result = run_cli(
        "eval",
        "--bundle",
        str(forged),
        "--data-dir",
        str(tiny_tarball),
        "--attacks",
        "fgsm",
        "--n",
        "4",
        "--out",
        str(tmp_path / "eval"),
        "--device",
        "cpu",
        cache=tmp_path,
    )
    assert result.returncode == 2
    assert "modified after export" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_exit_with_usage(tmp_path):
    result = run_cli("train", "--method", "mart", "--out", str(tmp_path), cache=tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'mart'" in result.stderr


def test_train_with_a_single_step_inner_attack_records_it(tiny_tarball, tmp_path):
    out = tmp_path / "fast"
    common = ["--dataset", "imagefolder", "--data-dir", str(tiny_tarball), "--epochs", "1", "--batch-size", "16"]
    common += ["--holdout", "8", "--holdout-eval", "8", "--width", "0.0625", "--device", "cpu", "--threads", "1"]
    result = run_cli(
        "train", "--method", "otjr", "--attack", "n-fgsm", "--attack-noise", "12/255", "--n-projections", "4",
        "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *common, cache=tmp_path / "xdg",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hyper = bundle.load(out / "best").metadata["hyperparameters"]
    assert hyper["attack"] == "n-fgsm"
    assert hyper["attack_noise"] == pytest.approx(12 / 255) and hyper["attack_alpha"] == pytest.approx(8 / 255)
    assert "attack_steps" not in hyper
    assert "best checkpoint: epoch 1" in result.stdout
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"holdout_fgsm", "best_epoch", "catastrophic_overfitting"} <= set(record)
    bad = run_cli("train", "--method", "pgd-at", "--attack", "bim", "--out", str(tmp_path / "x"), cache=tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'bim'" in bad.stderr
