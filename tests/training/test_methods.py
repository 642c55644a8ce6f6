"""Training objectives (training/methods.py): each one lowers its own loss on a fixed batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from training.methods import METHODS, REGISTRY, MethodConfig, StepOutput, get_method
from training.models import build_model

CFG = MethodConfig(attack_steps=2, n_projections=8)


def tiny_batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes told apart by brightness, 8x8 RGB."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.3 + 0.4 * y.view(-1, 1, 1, 1) + 0.15 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("preact18", 2, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], width=0.0625)


def loss_at(method, model, x, y, seed: int = 1234) -> float:
    """The method's loss with its randomness (attack starts, projections) fixed by ``seed``."""
    torch.manual_seed(seed)
    return method(model, x, y, CFG).loss.item()


def test_registry_matches_the_method_names():
    assert tuple(REGISTRY) == METHODS
    assert set(METHODS) >= {"standard", "pgd-at", "trades", "jr", "sw", "sw-jr", "otjr"}


@pytest.mark.parametrize("name", METHODS)
def test_method_returns_a_finite_differentiable_loss(name):
    model = tiny_model()
    model.train()
    x, y = tiny_batch()
    torch.manual_seed(0)
    step = get_method(name)(model, x, y, CFG)
    assert isinstance(step, StepOutput)
    assert step.loss.dim() == 0 and math.isfinite(step.loss.item())
    assert step.loss.requires_grad
    assert step.logits.shape == (len(y), 2)
    assert step.parts and all(math.isfinite(v) for v in step.parts.values())
    assert model.training  # inner maximisation hands the model back in train mode
    step.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is None  # the caller's batch is not turned into a leaf that collects gradients


@pytest.mark.parametrize("name", METHODS)
def test_method_lowers_its_own_loss_on_a_fixed_batch(name):
    method = get_method(name)
    model = tiny_model()
    model.train()
    x, y = tiny_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = loss_at(method, model, x, y)
    for step in range(15):
        torch.manual_seed(step)
        loss = method(model, x, y, CFG).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = loss_at(method, model, x, y)
    assert after < 0.5 * before, f"{name}: {before:.4f} -> {after:.4f}"


def test_otjr_loss_is_the_weighted_sum_of_its_parts():
    model = tiny_model()
    model.train()
    x, y = tiny_batch()
    cfg = MethodConfig(attack_steps=2, beta_sw=3.0, beta_jr=0.5, n_projections=8)
    torch.manual_seed(0)
    step = get_method("otjr")(model, x, y, cfg)
    assert set(step.parts) == {"ce_adv", "sw", "jr"}
    expected = step.parts["ce_adv"] + 3.0 * step.parts["sw"] + 0.5 * step.parts["jr"]
    assert step.loss.item() == pytest.approx(expected, rel=1e-5)
    assert step.parts["sw"] > 0 and step.parts["jr"] > 0


def test_method_parts_name_their_terms():
    model = tiny_model()
    model.train()
    x, y = tiny_batch()
    expected = {
        "standard": {"ce"},
        "pgd-at": {"ce_adv"},
        "trades": {"ce", "kl"},
        "jr": {"ce", "jr"},
        "sw": {"ce_adv", "sw"},
        "sw-jr": {"ce", "sw", "jr"},
        "otjr": {"ce_adv", "sw", "jr"},
    }
    for name in METHODS:
        torch.manual_seed(0)
        assert set(get_method(name)(model, x, y, CFG).parts) == expected[name], name


def test_standard_loss_is_clean_cross_entropy():
    model = tiny_model()
    model.train()
    x, y = tiny_batch()
    step = get_method("standard")(model, x, y, CFG)
    torch.testing.assert_close(step.loss, torch.nn.functional.cross_entropy(model(x), y))


def test_relevant_hyperparameters():
    cfg = MethodConfig()
    attack = {"attack", "eps", "step_size", "attack_steps", "attack_start"}
    jacobian = {"beta_jr", "jr_mode", "jr_fraction", "terms_precision"}
    assert cfg.relevant("standard") == {}
    assert set(cfg.relevant("pgd-at")) == attack
    assert set(cfg.relevant("trades")) == attack | {"trades_beta"}
    assert set(cfg.relevant("jr")) == jacobian
    assert set(cfg.relevant("sw")) == attack | {"beta_sw", "n_projections", "terms_precision"}
    assert set(cfg.relevant("sw-jr")) == attack | {"n_projections"} | jacobian
    assert set(cfg.relevant("otjr")) == attack | {"beta_sw", "n_projections"} | jacobian
    fd = MethodConfig(jr_mode="finite-difference").relevant("otjr")
    assert set(fd) == attack | {"beta_sw", "n_projections", "jr_step"} | jacobian
    otjr = MethodConfig(beta_sw=2.0, attack_steps=3).relevant("otjr")
    assert otjr["beta_sw"] == 2.0 and otjr["attack_steps"] == 3 and otjr["beta_jr"] == 0.005
    for name in METHODS:
        cfg.relevant(name)  # every method has an entry


def test_defaults_follow_the_method_note():
    cfg = MethodConfig()
    assert cfg.eps == pytest.approx(8 / 255)
    assert cfg.step_size == 0.007 and cfg.attack_steps == 10 and cfg.attack_start == "normal"
    assert cfg.beta_sw == 64.0 and cfg.beta_jr == 0.005 and cfg.n_projections == 32 and cfg.trades_beta == 6.0
    # The note's exact term on the whole batch; its terms in fp32 even where the trainer autocasts.
    assert cfg.jr_mode == "exact" and cfg.jr_fraction == 1.0 and cfg.terms_precision == "fp32"


def test_get_method_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown method 'mart'"):
        get_method("mart")
    assert get_method("otjr") is REGISTRY["otjr"]


FAST = ("fgsm-rs", "n-fgsm")


@pytest.mark.parametrize("attack", FAST)
@pytest.mark.parametrize("name", ["pgd-at", "trades", "sw", "sw-jr", "otjr"])
def test_single_step_inner_attacks_give_a_finite_differentiable_loss(name, attack):
    model = tiny_model()
    model.train()
    x, y = tiny_batch()
    torch.manual_seed(0)
    step = get_method(name)(model, x, y, MethodConfig(attack=attack, n_projections=8))
    assert math.isfinite(step.loss.item()) and model.training
    step.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("attack", ["pgd", *FAST])
def test_pgd_at_trains_on_the_configured_inner_attack(monkeypatch, attack):
    """PGD-AT's loss is the cross-entropy at exactly what the configured attack returns from the same seed."""
    from training import attacks, methods

    model = tiny_model()
    model.train()
    x, y = tiny_batch()
    cfg = MethodConfig(attack=attack, attack_steps=2, step_size=2 / 255)
    seen: list[torch.Tensor] = []
    for fn in ("pgd", "fgsm_rs", "n_fgsm"):
        original = getattr(attacks, fn)

        def spy(*args, _original=original, **kwargs):
            out = _original(*args, **kwargs)
            seen.append(out)
            return out

        monkeypatch.setattr(methods, fn, spy)
    before = copy.deepcopy(model)  # the step's train-mode forward moves batch-norm statistics
    torch.manual_seed(3)
    step = get_method("pgd-at")(model, x, y, cfg)
    assert len(seen) == 1
    model = before.eval()
    torch.manual_seed(3)
    reference = {
        "pgd": lambda: attacks.pgd(model, x, y, cfg.eps, 2 / 255, 2, start="normal"),
        "fgsm-rs": lambda: attacks.fgsm_rs(model, x, y, cfg.eps),
        "n-fgsm": lambda: attacks.n_fgsm(model, x, y, cfg.eps),
    }[attack]()
    torch.testing.assert_close(seen[0], reference)
    model.train()
    torch.testing.assert_close(step.loss, torch.nn.functional.cross_entropy(model(reference), y))
    limit = 3 * cfg.eps if attack == "n-fgsm" else cfg.eps
    assert (seen[0] - x).abs().max() <= limit + 1e-6


def test_single_step_hyperparameters_are_recorded_with_the_papers_defaults():
    eps = 8 / 255
    fgsm_rs = MethodConfig(attack="fgsm-rs").relevant("otjr")
    assert fgsm_rs["attack"] == "fgsm-rs" and fgsm_rs["attack_alpha"] == pytest.approx(1.25 * eps)
    assert not {"step_size", "attack_steps", "attack_start", "attack_noise"} & set(fgsm_rs)
    n = MethodConfig(attack="n-fgsm").relevant("pgd-at")
    assert n["attack_alpha"] == pytest.approx(eps) and n["attack_noise"] == pytest.approx(2 * eps)
    custom = MethodConfig(attack="n-fgsm", attack_alpha=0.01, attack_noise=0.02).relevant("trades")
    assert custom["attack_alpha"] == 0.01 and custom["attack_noise"] == 0.02 and custom["trades_beta"] == 6.0
    assert MethodConfig(attack="fgsm-rs").relevant("standard") == {}


def test_unknown_inner_attack_is_rejected():
    with pytest.raises(ValueError, match="unknown training attack 'bim'"):
        MethodConfig(attack="bim")
