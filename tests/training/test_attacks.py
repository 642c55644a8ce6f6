"""Attacks (training/attacks.py): budgets, objectives, worst-case robustness and the AutoAttack composition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.support.models import TinyConvNet
from training.attacks import (
    NamedAttack,
    autoattack_standard,
    cross_entropy_objective,
    evaluation_attack,
    fgsm,
    fgsm_rs,
    kl_objective,
    margin_objective,
    n_fgsm,
    parse_eps,
    pgd,
    pgd_l2,
    predict,
    robust_mask,
)

EPS = 8 / 255


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    model = TinyConvNet(num_classes=10, size=8).eval()
    x = torch.rand(16, 3, 8, 8)
    x[:4] = x[:4].round()  # pixels at exactly 0 and 1 exercise the [0, 1] clamp
    y = torch.randint(0, 10, (16,))
    return model, x, y


def assert_in_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0
    assert x_adv.max().item() <= 1.0


@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_pgd_stays_in_the_ball_and_in_the_unit_box(model_and_batch, start):
    model, x, y = model_and_batch
    torch.manual_seed(1)
    x_adv = pgd(model, x, y, EPS, 2 / 255, 5, start=start)
    assert_in_budget(x_adv, x, EPS)
    assert not x_adv.requires_grad


@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_pgd_raises_the_loss(model_and_batch, start):
    model, x, y = model_and_batch
    torch.manual_seed(2)
    x_adv = pgd(model, x, y, EPS, 2 / 255, 10, start=start)
    noise = (x + EPS * torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).mul(2).sub(1)).clamp(
        0, 1
    )
    with torch.no_grad():
        clean, adv = cross_entropy_objective(model(x), y), cross_entropy_objective(model(x_adv), y)
        random_corner = cross_entropy_objective(model(noise), y)
    assert adv > clean
    # Gradient ascent does better than a random corner of the same ball.
    assert adv - clean > 2 * abs(random_corner - clean)


@pytest.mark.parametrize("radius", [0.05, 0.5])
def test_pgd_l2_stays_in_the_l2_ball_and_raises_the_loss_beyond_random_noise(model_and_batch, radius):
    model, x, y = model_and_batch
    torch.manual_seed(3)
    x_adv = pgd_l2(model, x, y, radius, 10)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert norms.max().item() <= radius + 1e-5
    assert norms.mean().item() > 0.5 * radius  # it uses its budget, not a token step
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0 and not x_adv.requires_grad
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = (x + radius * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        clean, adv = cross_entropy_objective(model(x), y), cross_entropy_objective(model(x_adv), y)
        random_direction = cross_entropy_objective(model(noisy), y)
    assert adv - clean > 2 * abs(random_direction - clean)
    assert not model.training


def test_pgd_with_zero_steps_is_its_start(model_and_batch):
    model, x, y = model_and_batch
    assert torch.equal(pgd(model, x, y, EPS, 2 / 255, 0, start="none"), x)
    torch.manual_seed(3)
    uniform = pgd(model, x, y, EPS, 2 / 255, 0, start="uniform")
    assert_in_budget(uniform, x, EPS)
    interior = (x > EPS) & (x < 1 - EPS)
    assert (uniform - x)[interior].abs().mean() > EPS / 4  # spread over the ball, not at the centre
    torch.manual_seed(3)
    normal = pgd(model, x, y, EPS, 2 / 255, 0, start="normal", start_scale=0.001)
    assert (normal - x).abs().max() < 0.01  # tiny Gaussian noise only


def test_pgd_is_reproducible_under_a_seed(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(4)
    first = pgd(model, x, y, EPS, 2 / 255, 3)
    torch.manual_seed(4)
    assert torch.equal(first, pgd(model, x, y, EPS, 2 / 255, 3))


def test_pgd_rejects_an_unknown_start(model_and_batch):
    model, x, y = model_and_batch
    with pytest.raises(ValueError, match="start"):
        pgd(model, x, y, EPS, 2 / 255, 1, start="gaussian")


def test_pgd_with_the_margin_objective_raises_the_margin(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(5)
    x_adv = pgd(model, x, y, EPS, 2 / 255, 10, objective=margin_objective)
    assert_in_budget(x_adv, x, EPS)
    with torch.no_grad():
        assert margin_objective(model(x_adv), y) > margin_objective(model(x), y)


def test_pgd_with_the_kl_objective_moves_the_prediction(model_and_batch):
    model, x, y = model_and_batch
    with torch.no_grad():
        clean_logits = model(x)
    objective = kl_objective(clean_logits)
    assert objective(clean_logits, y).abs().item() < 1e-5  # KL of a distribution to itself
    torch.manual_seed(6)
    x_adv = pgd(model, x, y, EPS, 2 / 255, 5, objective=objective, start="normal")
    with torch.no_grad():
        assert objective(model(x_adv), y) > 1e-4


def test_fgsm_is_one_signed_step_of_size_eps(model_and_batch):
    model, x, y = model_and_batch
    x_adv = fgsm(model, x, y, EPS)
    assert_in_budget(x_adv, x, EPS)
    x_grad = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_grad), y, reduction="sum"), x_grad)
    expected = (x + EPS * grad.sign()).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)


def signed_gradient_at(model, point, y, objective=cross_entropy_objective):
    point = point.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(model(point), y), point)
    return grad.sign()


@pytest.mark.parametrize("alpha", [None, 4 / 255])
def test_fgsm_rs_matches_wong_et_al_exactly(model_and_batch, alpha):
    """Uniform start in the ball, one step of alpha (default 1.25 eps), projection to the ball and [0, 1]."""
    model, x, y = model_and_batch
    torch.manual_seed(7)
    x_adv = fgsm_rs(model, x, y, EPS, alpha)
    torch.manual_seed(7)
    start = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    step = 1.25 * EPS if alpha is None else alpha
    expected = start + step * signed_gradient_at(model, start, y)
    expected = torch.min(torch.max(expected, x - EPS), x + EPS).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-7)
    assert_in_budget(x_adv, x, EPS)
    assert not x_adv.requires_grad


def test_fgsm_rs_default_step_reaches_the_edge_of_the_ball(model_and_batch):
    """A 1.25 eps step from anywhere in the ball ends beyond it, so interior pixels land on +-eps (projected)."""
    model, x, y = model_and_batch
    torch.manual_seed(8)
    delta = fgsm_rs(model, x, y, EPS) - x
    interior = (x > 2 * EPS) & (x < 1 - 2 * EPS)
    at_edge = ((delta.abs() - EPS).abs() < 1e-6)[interior].float().mean()
    assert at_edge > 0.55  # 1.25 eps from U(-eps, eps): P(|start + step| >= eps) = 0.625 per pixel


@pytest.mark.parametrize(("noise", "alpha"), [(None, None), (4 / 255, 2 / 255)])
def test_n_fgsm_matches_de_jorge_et_al_exactly(model_and_batch, noise, alpha):
    """x + U(-noise, noise) (default 2 eps), one step of alpha (default eps), clip to [0, 1], no projection."""
    model, x, y = model_and_batch
    torch.manual_seed(9)
    x_adv = n_fgsm(model, x, y, EPS, noise, alpha)
    torch.manual_seed(9)
    k = 2 * EPS if noise is None else noise
    start = (x + torch.empty_like(x).uniform_(-k, k)).clamp(0, 1)
    step = EPS if alpha is None else alpha
    expected = (start + step * signed_gradient_at(model, start, y)).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-7)


def test_n_fgsm_is_not_projected_to_the_eps_ball(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(10)
    x_adv = n_fgsm(model, x, y, EPS)
    delta = (x_adv - x).abs()
    assert delta.max().item() <= 3 * EPS + 1e-6  # noise 2 eps + step eps
    interior = (x > 3 * EPS) & (x < 1 - 3 * EPS)
    assert (delta[interior] > EPS + 1e-6).float().mean() > 0.3  # well outside the eps ball, by design
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


@pytest.mark.parametrize("attack", ["fgsm-rs", "n-fgsm"])
def test_single_step_attacks_raise_the_loss_over_their_random_start(model_and_batch, attack):
    model, x, y = model_and_batch
    run = fgsm_rs if attack == "fgsm-rs" else n_fgsm
    losses = []
    for seed in range(5):
        torch.manual_seed(seed)
        x_adv = run(model, x, y, EPS)
        torch.manual_seed(seed)
        k = EPS if attack == "fgsm-rs" else 2 * EPS
        start = (x + torch.empty_like(x).uniform_(-k, k)).clamp(0, 1)
        with torch.no_grad():
            losses.append((cross_entropy_objective(model(x_adv), y) - cross_entropy_objective(model(start), y)).item())
    assert min(losses) > 0


def test_single_step_attacks_accept_the_trades_objective(model_and_batch):
    model, x, y = model_and_batch
    with torch.no_grad():
        objective = kl_objective(model(x))
    for run in (fgsm_rs, n_fgsm):
        torch.manual_seed(11)
        x_adv = run(model, x, y, EPS, objective=objective)
        with torch.no_grad():
            assert objective(model(x_adv), y) > 1e-4


def test_margin_objective_on_a_hand_made_example():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0], [0.0, 0.0, -2.0]])
    y = torch.tensor([2, 0, 2])
    # best other minus true: 3 - 2 = 1; 1 - 5 = -4; 0 - (-2) = 2
    assert margin_objective(logits, y).item() == pytest.approx(-1.0)
    assert margin_objective(logits[:1], y[:1]).item() == pytest.approx(1.0)
    assert margin_objective(logits[1:2], y[1:2]).item() == pytest.approx(-4.0)


def test_cross_entropy_objective_is_a_sum():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(cross_entropy_objective(logits, y), 6 * F.cross_entropy(logits, y))


def test_parse_eps():
    assert parse_eps("8/255") == pytest.approx(8 / 255, rel=1e-15)
    assert parse_eps("0.031") == pytest.approx(0.031)
    assert parse_eps(0.5) == 0.5
    assert parse_eps("0") == 0.0
    with pytest.raises(ValueError):
        parse_eps("eight")


# --- worst case over attacks ---------------------------------------------------------------------------------


class MeanBrightness(nn.Module):
    """Class 1 when the mean pixel is above 0.5, else class 0: attacks move the mean up or down."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 100 * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def shift(amount: float):
    return lambda _model, x, _y: (x + amount).clamp(0, 1)


def test_robust_mask_counts_the_worst_case():
    model = MeanBrightness()
    x = torch.tensor([0.52, 0.48, 0.9, 0.45, 0.1]).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    y = torch.tensor([1, 0, 1, 1, 0])  # point 3 is misclassified before any attack
    assert predict(model, x).tolist() == [1, 0, 1, 0, 0]
    eps = 0.03
    attacks = [NamedAttack("down", eps, shift(-eps)), NamedAttack("up", eps, shift(eps))]
    seen: list[tuple[str, int]] = []
    mask, after = robust_mask(model, x, y, attacks, on_progress=lambda name, k: seen.append((name, k)))
    # "down" breaks point 0, "up" breaks point 1; points 2 and 4 survive both.
    assert mask.tolist() == [False, False, True, False, True]
    assert after == {"down": pytest.approx(3 / 5), "up": pytest.approx(2 / 5)}
    # Each attack runs only on the points still robust.
    assert seen == [("down", 4), ("up", 3)]
    # The order of the attacks does not change the worst case.
    mask_reversed, _ = robust_mask(model, x, y, attacks[::-1])
    assert torch.equal(mask, mask_reversed)


def test_robust_mask_clips_an_attack_that_exceeds_its_budget():
    model = MeanBrightness()
    x = torch.full((2, 3, 2, 2), 0.45)
    y = torch.tensor([0, 0])
    cheat = NamedAttack("cheat", 0.03, shift(0.5))  # would reach 0.95, but only 0.48 is within budget
    mask, _ = robust_mask(model, x, y, [cheat])
    assert mask.tolist() == [True, True]
    honest = NamedAttack("honest", 0.1, shift(0.1))
    assert robust_mask(model, x, y, [honest])[0].tolist() == [False, False]


def test_robust_mask_batches_cover_every_point():
    model = MeanBrightness()
    x = torch.linspace(0.3, 0.7, 11).view(-1, 1, 1, 1).expand(-1, 3, 1, 1).contiguous()
    y = (x.flatten(1).mean(1) > 0.5).long()
    attacks = [NamedAttack("down", 0.05, shift(-0.05))]
    small, _ = robust_mask(model, x, y, attacks, batch_size=3)
    large, _ = robust_mask(model, x, y, attacks, batch_size=100)
    assert torch.equal(small, large)
    assert 0 < small.sum() < len(y)


# --- evaluation names and AutoAttack ------------------------------------------------------------------------


def test_evaluation_attack_names():
    assert [a.name for a in evaluation_attack("fgsm", EPS, 10)] == ["fgsm"]
    assert [a.name for a in evaluation_attack("pgd5", EPS, 10)] == ["pgd5"]
    assert [a.name for a in evaluation_attack("pgd20", EPS, 10)] == ["pgd20"]
    assert [a.name for a in evaluation_attack("cw", EPS, 10)] == ["cw"]
    assert [a.name for a in evaluation_attack("autoattack", EPS, 10)] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a.eps == EPS for a in evaluation_attack("autoattack", EPS, 10))
    with pytest.raises(ValueError, match="unknown attack"):
        evaluation_attack("deepfool", EPS, 10)


def test_pgd_evaluation_attacks_break_more_with_more_steps(model_and_batch):
    model, x, _ = model_and_batch
    y = predict(model, x)  # all correct before the attack
    torch.manual_seed(0)
    results = {}
    for name in ("fgsm", "pgd1", "pgd20", "cw"):
        (attack,) = evaluation_attack(name, EPS, 10)
        x_adv = attack.run(model, x, y)
        assert_in_budget(x_adv, x, EPS)
        results[name] = (predict(model, x_adv) == y).float().mean().item()
    assert results["pgd20"] < 1.0
    assert results["pgd20"] <= results["pgd1"]


def torchattacks_object(attack: NamedAttack, model: nn.Module):
    """The torchattacks object an AutoAttack stage builds for ``model`` (its factory sits in the closure)."""
    cells = dict(zip(attack.run.__code__.co_freevars, (c.cell_contents for c in attack.run.__closure__), strict=True))
    return cells["factory"](model)


def linear_model(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes)).eval()


def test_autoattack_standard_uses_the_reference_settings():
    model = linear_model(10)
    stages = {a.name: torchattacks_object(a, model) for a in autoattack_standard(EPS, 10, seed=7)}
    assert list(stages) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    apgd, apgdt, fab, square = stages.values()
    assert type(apgd).__name__ == "APGD" and apgd.loss == "ce"
    assert type(apgdt).__name__ == "APGDT"
    assert type(fab).__name__ == "FAB" and fab.multi_targeted
    assert type(square).__name__ == "Square"
    for stage in (apgd, apgdt, fab):
        assert stage.steps == 100
    for stage in stages.values():
        assert stage.norm == "Linf"
        assert stage.eps == EPS
        assert stage.n_restarts == 1
        assert stage.seed == 7
    assert apgdt.n_target_classes == 9 and fab.n_target_classes == 9
    assert apgd.thr_decr == apgdt.thr_decr == 0.75
    assert square.n_queries == 5000 and square.p_init == 0.8 and square.loss == "margin"
    # With fewer classes the targeted stages use every other class.
    small = {a.name: torchattacks_object(a, model) for a in autoattack_standard(EPS, 4)}
    assert small["apgd-t"].n_target_classes == 3 and small["fab-t"].n_target_classes == 3


def test_autoattack_stages_run_within_budget():
    model = linear_model(4)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    y = predict(model, x)
    eps = 32 / 255  # large enough that a linear model falls fast, so Square stops early
    for stage in autoattack_standard(eps, 4):
        x_adv = stage.run(model, x, y)
        assert_in_budget(x_adv, x, eps)
        assert (predict(model, x_adv) != y).any(), stage.name


def test_robust_mask_with_autoattack_is_no_better_than_any_stage():
    model = linear_model(4)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(124))
    y = predict(model, x)
    eps = 16 / 255
    mask, after = robust_mask(model, x, y, autoattack_standard(eps, 4))
    assert list(after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    values = list(after.values())
    assert values == sorted(values, reverse=True)  # accuracy can only fall from stage to stage
    assert mask.float().mean().item() == pytest.approx(values[-1])
    assert values[-1] < 1.0


@pytest.mark.parametrize("name", ["pgd-5", "pgd0", "pgdx", "square"])
def test_evaluation_attack_rejects_bad_names(name):
    with pytest.raises(ValueError):
        evaluation_attack(name, 8 / 255, 10)
