"""Frozen gates (training/losses/gates.py): a replayed forward is the network with its selections fixed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

from tests.support.gradients import parameter_gradient
from training.losses import GateRecord, finite_difference_term, jacobian_penalty, random_unit_directions
from training.methods import norm_statistics_kept
from training.models import build_model


def piecewise_net() -> nn.Module:
    """Every gate kind the record handles: in-place ReLU, ReLU6, max pooling, hardtanh."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU6(),
        nn.MaxPool2d(2),
        nn.Hardtanh(-0.5, 0.5),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).double()


def test_replay_at_the_recorded_input_reproduces_the_forward():
    net = piecewise_net()
    x = 30 * torch.randn(4, 3, 8, 8, dtype=torch.float64)  # large enough for ReLU6 and hardtanh to clip
    gates = GateRecord()
    with gates.recording():
        recorded = net(x)
    assert [g.kind for g in gates.gates] == ["mask", "mask", "argmax", "mask"]
    relu6, hardtanh = gates.gates[1].constant, gates.gates[3].constant
    assert relu6 is not None and (relu6 == 6).any()  # each clip did clip somewhere
    assert hardtanh is not None and (hardtanh == 0.5).any()
    with gates.replaying():
        replayed = net(x)
    torch.testing.assert_close(replayed, recorded, rtol=0, atol=1e-12)
    torch.testing.assert_close(recorded, net(x))


def test_replayed_piecewise_linear_network_is_linear_in_its_input():
    net = piecewise_net()
    x = 3 * torch.randn(4, 3, 8, 8, dtype=torch.float64)
    step = 0.5 * torch.randn_like(x)  # far enough for many units to switch
    gates = GateRecord()
    with gates.recording():
        clean = net(x)
    with gates.replaying():
        shifted = net(x + step)
    _, tangent = jvp(net, (x,), (step,))
    torch.testing.assert_close(shifted - clean, tangent, rtol=1e-10, atol=1e-10)
    # Without the replay the same step is far from linear: the gates matter at this size.
    assert (net(x + step) - clean - tangent).abs().max() > 1e-2


def test_replay_on_a_different_network_is_refused():
    net = piecewise_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gates = GateRecord()
    with gates.recording():
        net(x)
    with pytest.raises(RuntimeError, match="more gates"), gates.replaying():
        net(x)
        net(x)
    with pytest.raises(RuntimeError, match="used 0 of 4"), gates.replaying():
        pass
    with pytest.raises(RuntimeError, match="recorded mask"), gates.replaying():
        net(torch.randn(2, 3, 16, 16, dtype=torch.float64))


def preact(train: bool) -> nn.Module:
    torch.manual_seed(0)
    return build_model("preact18", 10, [0.5] * 3, [0.25] * 3, width=0.125).double().train(train)


def fd_gradient_cosine(net: nn.Module, x: torch.Tensor, u: torch.Tensor, step: float, *, replay: bool) -> float:
    x_exact = x.clone().requires_grad_(True)
    exact = parameter_gradient(net, jacobian_penalty(x_exact, net(x_exact), u))
    gates = GateRecord()
    x_fd = x.clone().requires_grad_(True)
    with gates.recording():
        logits = net(x_fd)

    def forward(shifted: torch.Tensor) -> torch.Tensor:
        with norm_statistics_kept(net), gates.replaying() if replay else torch.enable_grad():
            return net(shifted)

    term = finite_difference_term(forward, x_fd, logits, u, step)
    return F.cosine_similarity(parameter_gradient(net, term.penalty), exact, dim=0).item()


def test_finite_difference_on_a_relu_network_needs_the_gates_replayed():
    # PreActResNet-18 in train mode (ReLU and batch norm), float64.  Units switching between x and the shifted
    # x put O(1/step) terms into the plain quotient's gradient; with the gates replayed it converges.
    net = preact(train=True)
    x = torch.rand(8, 3, 32, 32, dtype=torch.float64)
    u = random_unit_directions(8, 10, generator=torch.Generator().manual_seed(1)).double()
    replayed = [fd_gradient_cosine(net, x, u, step, replay=True) for step in (1e-2, 1e-3)]
    assert replayed[0] > 0.999 and replayed[1] > 0.99999, replayed
    assert fd_gradient_cosine(net, x, u, 1e-3, replay=False) < 0.9
