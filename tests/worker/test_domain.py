"""The in-domain model: "no confident class" for images outside the robust model's classes."""

from __future__ import annotations

import torch

from worker.engine import domain


def _population(n: int, confident: bool, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Softmaxes that are peaked (in domain) or flat (outside), and matching disagreement scores."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g) * (4.0 if confident else 0.7)
    probs = logits.softmax(1)
    disagree = torch.rand(n, generator=g) * (0.3 if confident else 1.0)
    return probs, {"kl_rs": disagree * 2, "disagree": disagree}


def test_features_are_the_top_probability_and_the_entropy():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    f = domain.features(probs, {"kl_rs": torch.zeros(2), "disagree": torch.zeros(2)})
    torch.testing.assert_close(f["robust_max"], torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(f["robust_entropy"], torch.tensor([0.0, 0.6931471805599453], dtype=torch.float64))


def test_fit_keeps_the_stated_share_of_in_domain_images_and_rejects_most_others():
    inside, held = _population(400, True, 0), _population(400, True, 1)
    outside = _population(400, False, 2)
    model = domain.fit_domain(inside, outside, held, keep=0.9)
    assert 0.89 <= model.keep <= 0.91
    new_inside, new_outside = _population(1000, True, 3), _population(1000, False, 4)
    kept = (model.logit(*new_inside) >= model.threshold).double().mean()
    rejected = (model.logit(*new_outside) < model.threshold).double().mean()
    assert kept > 0.85 and rejected > 0.8
    assert domain.DomainModel.from_dict(model.to_dict()) == model  # round-trips through the artefact


def test_engine_names_no_class_below_the_threshold(engine):
    """A calibration with a domain model whose threshold no image reaches: every verdict has label None but
    still reports the top class index and an in-domain score."""
    import dataclasses

    from worker.engine import calibration as calib
    from worker.engine.combiner import Combiner
    from worker.engine.engine import Engine

    features = ("robust_max", "robust_entropy", "kl_rs", "disagree")
    combiner = Combiner(features, (0.0,) * 4, (1.0,) * 4, (1.0, 0.0, 0.0, 0.0), 0.0)
    strict = domain.DomainModel(combiner, threshold=1e9, keep=0.0)
    artefact = calib.build(
        ["kl_rs", "disagree", "perturbation_net"], "detectors/3",
        Combiner(("kl_rs", "disagree", "perturbation_net"), (0.0,) * 3, (1.0,) * 3, (1.0,) * 3, 0.0),
        torch.zeros(10), {}, 0.1, engine.bundle_versions, {}, domain=strict,
    )  # fmt: skip
    served = Engine(engine.robust, engine.standard, artefact, threads=1, detector=engine.detector)
    verdicts = served.analyse_tensor(torch.rand(3, 3, 8, 8))
    assert all(v.label is None and 0 <= v.in_domain <= 1 for v in verdicts)
    lenient = dataclasses.replace(artefact, domain=dataclasses.replace(strict, threshold=-1e9))
    served = Engine(engine.robust, engine.standard, lenient, threads=1, detector=engine.detector)
    assert all(v.label == served.classes[v.label_index] for v in served.analyse_tensor(torch.rand(3, 3, 8, 8)))
