"""The training loop (training/trainer.py): seeded, exactly resumable, and exporting loadable bundles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import bundle
from training.methods import MethodConfig
from training.trainer import TrainConfig, Trainer


def config(tarball: Path, tmp_path: Path, out: str, **overrides) -> TrainConfig:
    base = TrainConfig(
        method="otjr",
        width=0.0625,
        dataset="imagefolder",
        data_dir=str(tarball),
        out=str(tmp_path / out),
        epochs=2,
        batch_size=16,
        holdout=8,
        holdout_eval=8,
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
        method_config=MethodConfig(attack_steps=1, n_projections=8),
        command="pytest",
    )
    return dataclasses.replace(base, **overrides)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / which / bundle.WEIGHTS_FILE))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tiny_tarball, tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    torch.manual_seed(111)  # the global RNG state before training must not matter
    Trainer(config(tiny_tarball, tmp_path, "run")).fit()
    return tmp_path / "run"


def test_resumed_run_equals_the_uninterrupted_run(uninterrupted, tiny_tarball, tmp_path):
    cfg = config(tiny_tarball, tmp_path, "run")
    torch.manual_seed(222)
    Trainer(cfg).fit(stop_after_epoch=1)
    assert len(metrics(tmp_path / "run")) == 1
    assert (tmp_path / "run" / "last.pt").exists()
    torch.manual_seed(333)
    Trainer(dataclasses.replace(cfg, resume=True)).fit()

    assert_same_weights(weights(uninterrupted), weights(tmp_path / "run"))
    a, b = metrics(uninterrupted), metrics(tmp_path / "run")
    assert len(a) == len(b) == 2
    assert without_timing(a) == without_timing(b)
    assert [r["epoch"] for r in b] == [1, 2]
    assert_same_weights(weights(uninterrupted, "best"), weights(tmp_path / "run", "best"))


def test_resume_of_a_finished_run_changes_nothing(uninterrupted, tiny_tarball, tmp_path):
    run = tmp_path / "copy"
    run.mkdir()
    for name in ("last.pt", "metrics.jsonl"):
        (run / name).write_bytes((uninterrupted / name).read_bytes())
    trainer = Trainer(dataclasses.replace(config(tiny_tarball, tmp_path, "copy"), resume=True))
    assert trainer.start_epoch == 2
    trainer.fit()
    assert len(metrics(run)) == 2
    assert not (run / "last").exists()  # nothing new was trained, so no new export


def test_bundles_load_and_describe_the_run(uninterrupted):
    best, last = bundle.load(uninterrupted / "best"), bundle.load(uninterrupted / "last")
    for loaded in (best, last):
        meta = loaded.metadata
        assert loaded.classes == ["bright", "dark"]
        assert meta["arch"] == "preact18" and meta["width"] == 0.0625 and meta["num_classes"] == 2
        assert meta["input_size"] == [3, 8, 8]
        assert meta["method"] == "otjr" and meta["dataset"] == "imagefolder"
        assert meta["hyperparameters"] == MethodConfig(attack_steps=1, n_projections=8).relevant("otjr")
        assert meta["training"]["train_images"] == 56 and meta["training"]["epochs"] == 2
        assert meta["command"] == "pytest"
        assert 0.0 <= meta["metrics"]["holdout_pgd10"] <= meta["metrics"]["holdout_clean"] <= 1.0
        with torch.no_grad():
            logits = loaded.model(torch.rand(4, 3, 8, 8))
        assert logits.shape == (4, 2) and torch.isfinite(logits).all()
    assert best.metadata["metrics"]["checkpoint"] == "best"
    assert last.metadata["metrics"]["checkpoint"] == "last" and last.metadata["metrics"]["epoch"] == 2
    records = metrics(uninterrupted)
    best_epoch = best.metadata["metrics"]["epoch"]
    assert records[best_epoch - 1]["holdout_pgd10"] == max(r["holdout_pgd10"] for r in records)
    assert json.loads((uninterrupted / "config.json").read_text())["method"] == "otjr"


def test_metrics_records_hold_the_method_parts(uninterrupted):
    for record in metrics(uninterrupted):
        assert {
            "epoch",
            "lr",
            "train_loss",
            "train_acc",
            "ce_adv",
            "sw",
            "jr",
            "holdout_clean",
            "holdout_pgd10",
        } <= set(record)
        assert record["train_loss"] > 0 and 0 <= record["train_acc"] <= 1
        assert record["lr"] == pytest.approx(0.1)  # piecewise: full rate for the first 75% of 2 epochs


def test_seed_decides_the_initial_weights(tiny_tarball, tmp_path):
    cfg = config(tiny_tarball, tmp_path, "a", method="standard")
    torch.manual_seed(1)
    first = Trainer(cfg).model.state_dict()
    torch.manual_seed(2)
    second = Trainer(cfg).model.state_dict()
    third = Trainer(dataclasses.replace(cfg, seed=1)).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_train_limit_and_holdout_sizes(tiny_tarball, tmp_path):
    trainer = Trainer(config(tiny_tarball, tmp_path, "limited", method="standard", train_limit=32))
    assert len(trainer.train_set) == 32 and len(trainer.holdout) == 8
    assert trainer.steps_per_epoch == 2


def test_batch_larger_than_the_training_set_is_rejected(tiny_tarball, tmp_path):
    with pytest.raises(ValueError, match="batch size 128 exceeds"):
        Trainer(config(tiny_tarball, tmp_path, "big", batch_size=128))


def test_unknown_method_is_rejected(tiny_tarball, tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        Trainer(config(tiny_tarball, tmp_path, "bad", method="mart"))


def test_metrics_record_fgsm_beside_pgd_and_the_best_epoch(uninterrupted):
    records = metrics(uninterrupted)
    best_so_far = 0
    for record in records:
        assert 0.0 <= record["holdout_fgsm"] <= 1.0
        assert record["catastrophic_overfitting"] is False
        if record["epoch"] == 1 or record["holdout_pgd10"] > records[best_so_far - 1]["holdout_pgd10"]:
            best_so_far = record["epoch"]
        assert record["best_epoch"] == best_so_far
    last = bundle.load(uninterrupted / "last").metadata["metrics"]
    assert last["best_epoch"] == bundle.load(uninterrupted / "best").metadata["metrics"]["epoch"]


def scripted_checks(trainer: Trainer, results: list[tuple[float, float, float]]) -> None:
    """Replace the held-out check by a script of (clean, fgsm, pgd10) results, one per epoch."""
    script = iter(results)

    def check() -> dict[str, float]:
        clean, fgsm_acc, pgd10 = next(script)
        return {"holdout_clean": clean, "holdout_fgsm": fgsm_acc, "holdout_pgd10": pgd10}

    trainer.holdout_check = check  # type: ignore[method-assign]


# Single-step training as it goes catastrophically wrong: PGD accuracy collapses while FGSM accuracy rises.
COLLAPSE = [(0.40, 0.30, 0.25), (0.45, 0.34, 0.30), (0.50, 0.70, 0.02), (0.55, 0.85, 0.00)]


def test_catastrophic_overfitting_is_flagged_and_best_keeps_the_epoch_before(tiny_tarball, tmp_path, capsys):
    trainer = Trainer(config(tiny_tarball, tmp_path, "co", method="pgd-at", epochs=4))
    scripted_checks(trainer, COLLAPSE)
    trainer.fit()
    records = metrics(tmp_path / "co")
    assert [r["catastrophic_overfitting"] for r in records] == [False, False, True, True]
    assert [r["best_epoch"] for r in records] == [1, 2, 2, 2]
    assert bundle.load(tmp_path / "co" / "best").metadata["metrics"]["epoch"] == 2
    out = capsys.readouterr().out
    assert "catastrophic overfitting suspected at epoch 3" in out
    assert "best checkpoint: epoch 2" in out


def test_stop_on_co_ends_the_run_at_the_first_collapse(tiny_tarball, tmp_path):
    trainer = Trainer(config(tiny_tarball, tmp_path, "stop", method="pgd-at", epochs=4, stop_on_co=True))
    scripted_checks(trainer, COLLAPSE)
    trainer.fit()
    records = metrics(tmp_path / "stop")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert bundle.load(tmp_path / "stop" / "last").metadata["metrics"]["best_epoch"] == 2


@pytest.mark.parametrize(
    ("check", "flag"),
    [
        ((0.5, 0.45, 0.19), True),  # PGD 0.11 below its best, FGSM 0.26 above PGD
        ((0.5, 0.38, 0.19), False),  # the drop without the FGSM gap: ordinary noise or robust overfitting
        ((0.5, 0.90, 0.22), False),  # the gap without enough of a drop
    ],
)
def test_catastrophic_overfitting_needs_both_the_drop_and_the_gap(tiny_tarball, tmp_path, check, flag):
    trainer = Trainer(config(tiny_tarball, tmp_path, "rule", method="pgd-at"))
    trainer.best_pgd = 0.30
    record = {"holdout_clean": check[0], "holdout_fgsm": check[1], "holdout_pgd10": check[2]}
    assert trainer.catastrophic_overfitting(record) is flag
    standard = Trainer(config(tiny_tarball, tmp_path, "std", method="standard"))
    standard.best_pgd = 0.30
    assert standard.catastrophic_overfitting(record) is False  # standard models have no robustness to lose
