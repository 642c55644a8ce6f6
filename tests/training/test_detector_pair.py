"""The detector pair (training/models/detector_pair.py): an average of two detectors, each trained as itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.models import build_model
from worker.research.train_detector import detector_loss

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
WEIGHT = torch.tensor([0.7, 1.6])


def pair(seed: int = 0, width: int = 8):
    torch.manual_seed(seed)
    model = build_model("perturbation-pair", 2, MEAN, STD, width)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(8, 3, 32, 32))
    return model.eval()


def alone(model, arch: str):
    """The stand-alone design with the branch's very weights."""
    single = build_model(arch, 2, MEAN, STD, 8)
    branch = model.net.picture if arch == "perturbation-cnn2" else model.net.residual
    single.net.load_state_dict(branch.state_dict())
    return single.eval()


def test_the_pair_scores_the_mean_of_its_two_detectors_logits():
    model = pair()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = (alone(model, "perturbation-cnn2")(x) + alone(model, "perturbation-residual")(x)) / 2
        torch.testing.assert_close(model(x), expected)


def test_each_branch_learns_from_its_own_loss_only():
    """The training loss is the two designs' losses added: the picture branch gets exactly the gradient the
    stand-alone perturbation-cnn2 would get, whatever the residual branch says (and the other way round)."""
    model = pair().train()
    x, y = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1] * 4)
    references = {arch: alone(model, arch).train() for arch in ("perturbation-cnn2", "perturbation-residual")}
    loss = detector_loss(model, x, y, WEIGHT)
    loss.backward()
    total = 0.0
    for arch, single in references.items():
        single_loss = F.cross_entropy(single(x), y, weight=WEIGHT)
        single_loss.backward()
        total += single_loss.item()
        branch = model.net.picture if arch == "perturbation-cnn2" else model.net.residual
        for (name, mine), theirs in zip(branch.named_parameters(), single.net.parameters(), strict=True):
            if theirs.grad is None:  # the residual design's fixed filters
                assert mine.grad is None, name
                continue
            torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-6, rtol=1e-4, msg=f"{arch} {name}")
    assert abs(loss.item() - total) < 1e-5


def test_single_designs_keep_the_plain_cross_entropy():
    torch.manual_seed(0)
    model = build_model("perturbation-cnn2", 2, MEAN, STD, 8).eval()
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(detector_loss(model, x, y, WEIGHT), F.cross_entropy(model(x), y, weight=WEIGHT))
