"""Resumable robust evaluation (training/evaluate.py): an interrupted AutoAttack run continues where it stopped."""

from __future__ import annotations

import json

import pytest
import torch

from tests.support.models import TinyConvNet
from training.attacks import NamedAttack, predict
from training.evaluate import resumable_robust_mask

EPS = 16 / 255


def random_sign_attack(model, x, y):
    """A random (torch-seeded) L-inf corner: its result depends on the seed each chunk is given."""
    return (x + EPS * torch.randint(0, 2, x.shape).float().mul(2).sub(1)).clamp(0, 1)


class Interrupted(Exception):
    pass


def interrupting(after_calls: int):
    calls = {"n": 0}

    def run(model, x, y):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise Interrupted
        return random_sign_attack(model, x, y)

    return run


@pytest.fixture
def model_and_data():
    torch.manual_seed(0)
    model = TinyConvNet(num_classes=3, size=6).eval()
    x = torch.rand(23, 3, 6, 6)
    y = predict(model, x)  # every point starts correct, so the attack decides
    return model, x, y


KEY = {"version": "test", "eps": EPS, "seed": 3, "n": 23, "picked": 23}


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, model_and_data):
    model, x, y = model_and_data
    attacks = [NamedAttack("corner", EPS, random_sign_attack)]
    whole, whole_after = resumable_robust_mask(model, x, y, attacks, None, KEY, seed=3, chunk=5)
    assert 0 < whole.sum() < len(y)  # the attack breaks some points and not others

    checkpoint = tmp_path / "autoattack.json"
    with pytest.raises(Interrupted):
        resumable_robust_mask(
            model, x, y, [NamedAttack("corner", EPS, interrupting(2))], checkpoint, KEY, seed=3, chunk=5
        )
    saved = json.loads(checkpoint.read_text())
    assert len(saved["robust"]) == 10  # two finished chunks survive the interruption

    progress: list[tuple[str, int]] = []
    resumed, resumed_after = resumable_robust_mask(
        model, x, y, attacks, checkpoint, KEY, seed=3, chunk=5, on_progress=lambda s, k: progress.append((s, k))
    )
    assert torch.equal(resumed, whole)
    assert resumed_after == pytest.approx(whole_after)
    assert progress[0] == ("resumed", 10)
    assert sum(k for s, k in progress if s == "corner") == len(y) - 10  # only the unfinished points are attacked


def test_a_checkpoint_of_another_run_is_not_reused(tmp_path, model_and_data):
    model, x, y = model_and_data
    checkpoint = tmp_path / "autoattack.json"
    other = {**KEY, "version": "another-model"}
    checkpoint.write_text(json.dumps({"key": other, "robust": [False] * 20, "stage_counts": {"corner": 0}}))
    attacks = [NamedAttack("corner", EPS, random_sign_attack)]
    mask, after = resumable_robust_mask(model, x, y, attacks, checkpoint, KEY, seed=3, chunk=5)
    expected, _ = resumable_robust_mask(model, x, y, attacks, None, KEY, seed=3, chunk=5)
    assert torch.equal(mask, expected)
    assert mask.any()  # the stale all-broken record was not used
    assert json.loads(checkpoint.read_text())["key"] == KEY
    assert after["corner"] == pytest.approx(mask.float().mean().item())


def test_a_different_seed_gives_a_different_draw(model_and_data):
    model, x, y = model_and_data
    attacks = [NamedAttack("corner", EPS, random_sign_attack)]
    first, _ = resumable_robust_mask(model, x, y, attacks, None, KEY, seed=3, chunk=5)
    again, _ = resumable_robust_mask(model, x, y, attacks, None, KEY, seed=3, chunk=5)
    other, _ = resumable_robust_mask(model, x, y, attacks, None, KEY, seed=4, chunk=5)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
