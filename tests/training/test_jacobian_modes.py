"""The Jacobian term as the methods configure it (training/methods.py jacobian_term): finite difference,
random part of the batch, and what they leave untouched."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tests.support.gradients import parameter_gradient
from tests.support.models import TinyConvNet
from training.losses import jacobian_penalty, random_rows, random_unit_directions
from training.methods import MethodConfig, get_method, jacobian_term, transport_terms
from training.models import build_model

C = 5
FD = "finite-difference"


def per_sample_setup(batch: int = 6):
    """A network without batch norm: each row's term depends on that row alone."""
    torch.manual_seed(0)
    net = TinyConvNet(num_classes=C, size=4, dtype=torch.float64)
    x = torch.rand(batch, 3, 4, 4, dtype=torch.float64)
    directions = random_unit_directions(batch, C, generator=torch.Generator().manual_seed(1)).double()
    return net, x, directions


def term(net, x, directions, cfg: MethodConfig, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(cfg.jr_fraction == 1)
    return jacobian_term(net, x, net(x), directions, cfg, None)


def per_row_terms(net, x, directions) -> torch.Tensor:
    """C * ||u_b^T J_b||^2 for every row b, each from the exact penalty of that row alone."""
    rows = []
    for b in range(len(x)):
        xb = x[b : b + 1].clone().requires_grad_(True)
        rows.append(jacobian_penalty(xb, net(xb), directions[b : b + 1]))
    return torch.stack(rows).detach()


@pytest.mark.parametrize("mode", ["exact", FD])
def test_random_part_is_the_exact_term_on_the_chosen_rows(mode):
    net, x, directions = per_sample_setup()
    cfg = MethodConfig(jr_fraction=0.5, jr_mode=mode)
    rows_terms = per_row_terms(net, x, directions)
    for seed in range(3):
        torch.manual_seed(seed)
        rows = random_rows(len(x), 0.5)
        assert len(rows) == 3
        value = term(net, x, directions, cfg, seed)
        torch.testing.assert_close(value.detach(), rows_terms[rows].mean(), rtol=1e-10, atol=0)


def test_random_part_is_an_unbiased_estimate_of_the_full_term():
    net, x, directions = per_sample_setup()
    full = term(net, x, directions, MethodConfig(), seed=0).item()
    draws = torch.tensor([term(net, x, directions, MethodConfig(jr_fraction=0.5), s).item() for s in range(400)])
    assert draws.std() > 0.05 * full  # the draws do differ
    assert draws.mean().item() == pytest.approx(full, rel=0.05)  # 4 standard errors of the mean


def preact_batch(batch: int = 16):
    torch.manual_seed(0)
    model = build_model("preact18", 10, [0.5] * 3, [0.25] * 3, width=0.125).train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    x_adv = (x + (8 / 255) * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
    return model, x, x_adv


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_finite_difference_follows_the_exact_gradient_on_preact_resnet(fraction):
    # The project's architecture (ReLU, batch norm in train mode), float32 as the trainer runs the terms.
    model, x, x_adv = preact_batch()
    results = {}
    for mode in ("exact", FD):
        torch.manual_seed(0)
        terms = transport_terms(model, x, x_adv, MethodConfig(jr_mode=mode, jr_fraction=fraction), need_jr=True)
        results[mode] = (terms.penalty.detach(), parameter_gradient(model, terms.penalty))
    (exact_value, exact_grad), (fd_value, fd_grad) = results["exact"], results[FD]
    torch.testing.assert_close(fd_value, exact_value, rtol=1e-4, atol=0)
    assert F.cosine_similarity(fd_grad, exact_grad, dim=0) > 0.999
    assert (fd_grad.norm() / exact_grad.norm()).item() == pytest.approx(1, abs=0.01)


def norm_buffers(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("cfg", [MethodConfig(jr_mode=FD), MethodConfig(jr_fraction=0.5, jr_mode=FD)])
def test_extra_forwards_leave_batch_norm_statistics_as_the_exact_step_does(cfg):
    """The shifted batch and the re-forward of chosen rows are measurements: after a step batch norm's running
    statistics are those the exact term's step leaves (its clean and adversarial forwards only)."""
    model, x, x_adv = preact_batch()
    after = {}
    for name, config in (("exact", MethodConfig()), ("variant", cfg)):
        net = copy.deepcopy(model)
        torch.manual_seed(0)
        transport_terms(net, x, x_adv, config, need_jr=True).penalty.backward()
        after[name] = norm_buffers(net)
    assert after["exact"]["net.bn.num_batches_tracked"] == model.state_dict()["net.bn.num_batches_tracked"] + 2
    for key, value in after["exact"].items():
        torch.testing.assert_close(after["variant"][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["jr", "sw-jr", "otjr"])
@pytest.mark.parametrize("variant", [{"jr_mode": FD}, {"jr_fraction": 0.5}, {"jr_mode": FD, "jr_fraction": 0.5}])
def test_methods_with_a_cheaper_term_lower_their_own_loss(name, variant):
    torch.manual_seed(0)
    model = build_model("preact18", 2, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], width=0.0625).train()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(16) % 2
    x = (0.3 + 0.4 * y.view(-1, 1, 1, 1) + 0.15 * torch.randn(16, 3, 8, 8, generator=g)).clamp(0, 1)
    cfg = MethodConfig(attack_steps=2, n_projections=8, **variant)
    method = get_method(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return method(model, x, y, cfg).loss

    before = loss(1234).item()
    for step in range(15):
        optimizer.zero_grad()
        loss(step).backward()
        optimizer.step()
    assert loss(1234).item() < 0.5 * before


def test_relevant_records_the_jacobian_options():
    base = MethodConfig().relevant("otjr")
    assert base["jr_mode"] == "exact" and base["jr_fraction"] == 1.0 and base["terms_precision"] == "fp32"
    assert "jr_step" not in base  # unused by the exact term
    fd = MethodConfig(jr_mode=FD, jr_step=2e-3, jr_fraction=0.25).relevant("sw-jr")
    assert fd["jr_mode"] == FD and fd["jr_step"] == 2e-3 and fd["jr_fraction"] == 0.25
    assert "jr_mode" not in MethodConfig().relevant("sw") and "jr_mode" not in MethodConfig().relevant("pgd-at")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"jr_mode": "central"}, "unknown jr_mode"),
        ({"terms_precision": "fp16"}, "unknown terms_precision"),
        ({"jr_fraction": 0.0}, "jr_fraction"),
        ({"jr_fraction": 1.5}, "jr_fraction"),
        ({"jr_step": -1e-3}, "jr_step"),
        ({"jr_mode": FD, "terms_precision": "autocast"}, "needs terms_precision='fp32'"),
    ],
)
def test_bad_jacobian_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        replace(MethodConfig(), **kwargs)
