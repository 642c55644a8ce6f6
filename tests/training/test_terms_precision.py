"""The output-space terms under the trainer's bfloat16 autocast (training/trainer.py training_autocast): with
the default terms_precision they run in fp32 and match an fp64 computation; left under autocast they drift.

CPU autocast has bfloat16 too, so the trainer's CUDA path is reproduced here with device type "cpu".
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from training.attacks import pgd
from training.methods import MethodConfig, get_method, transport_terms
from training.models import build_model
from training.trainer import training_autocast

CFG = MethodConfig(n_projections=32)


def setup(batch: int = 32):
    torch.manual_seed(0)
    model = build_model("preact18", 10, [0.5] * 3, [0.25] * 3, width=0.125)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    model.eval()
    x_adv = pgd(model, x, y, 8 / 255, 0.007, 3)  # one adversarial batch for every precision compared
    return model.train(), x, x_adv


def terms(model, x, x_adv, cfg: MethodConfig, *, autocast: bool, dtype=torch.float32):
    model = copy.deepcopy(model).to(dtype)
    torch.manual_seed(5)  # the same SW projections for every run
    with training_autocast("cpu", enabled=autocast):
        return transport_terms(model, x.to(dtype), x_adv.to(dtype), cfg, need_jr=True)


@pytest.fixture(scope="module")
def runs():
    model, x, x_adv = setup()
    return {
        "fp64": terms(model, x, x_adv, CFG, autocast=False, dtype=torch.float64),
        "default": terms(model, x, x_adv, CFG, autocast=True),
        "autocast": terms(model, x, x_adv, MethodConfig(n_projections=32, terms_precision="autocast"), autocast=True),
    }


def cosines(a, b) -> torch.Tensor:
    return F.cosine_similarity(a.directions.double(), b.directions.double(), dim=1)


def test_transport_directions_under_the_trainers_autocast_match_fp64(runs):
    assert runs["default"].logits.dtype == torch.float32 and runs["default"].logits_adv.dtype == torch.float32
    assert cosines(runs["default"], runs["fp64"]).min() > 0.999
    torch.testing.assert_close(runs["default"].penalty.double(), runs["fp64"].penalty, rtol=1e-4, atol=0)
    torch.testing.assert_close(runs["default"].distance.double(), runs["fp64"].distance, rtol=1e-4, atol=0)


def test_the_same_terms_left_under_autocast_drift(runs):
    # The drift the fp32 default removes: bfloat16 logits, the transport read off their small differences.
    assert runs["autocast"].logits.dtype == torch.bfloat16
    assert cosines(runs["autocast"], runs["fp64"]).mean() < 0.99


def test_otjr_step_under_autocast_reports_fp32_terms():
    model, x, _ = setup(batch=16)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    with training_autocast("cpu", enabled=True):
        step = get_method("otjr")(model, x, y, MethodConfig(attack_steps=1, n_projections=8))
    assert step.logits.dtype == torch.float32
    step.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
