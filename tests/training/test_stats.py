"""Intervals (training/stats.py) and class-stratified evaluation subsets (training/data.py, training/evaluate.py)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binomtest

from training import bundle, evaluate
from training.attacks import NamedAttack, evaluation_attack
from training.data import ArrayDataset, stratified_order, stratified_prefix
from training.evaluate import markdown_table
from training.models import build_model
from training.stats import Z95, format_interval, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (238, 1000), (120, 500), (499, 500)])
def test_wilson_matches_scipy(k, n):
    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(1, 10), (37, 120), (240, 1000)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    """Each bound p is where the score statistic |k/n - p| / sqrt(p (1 - p) / n) equals z."""
    for p in wilson_interval(k, n):
        assert abs(k / n - p) / math.sqrt(p * (1 - p) / n) == pytest.approx(Z95, rel=1e-9)


def test_wilson_is_symmetric_and_contains_the_estimate():
    for n in (1, 7, 500):
        for k in range(0, n + 1, max(1, n // 13)):
            low, high = wilson_interval(k, n)
            mirror_low, mirror_high = wilson_interval(n - k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
            assert low == pytest.approx(1 - mirror_high) and high == pytest.approx(1 - mirror_low)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0


def test_wilson_interval_narrows_like_one_over_root_n():
    width = {n: (lambda b: b[1] - b[0])(wilson_interval(n // 4, n)) for n in (400, 1600)}
    assert width[400] / width[1600] == pytest.approx(2.0, rel=0.02)
    assert width[400] == pytest.approx(2 * Z95 * math.sqrt(0.25 * 0.75 / 400), rel=0.02)  # Wald-like for large n


def test_wilson_coverage_is_close_to_95_percent():
    """Simulated coverage over accuracies where robust models live, at 500 images."""
    g = torch.Generator().manual_seed(0)
    n, covered, total = 500, 0, 0
    for p in (0.05, 0.25, 0.5, 0.6):
        for k in torch.binomial(torch.full((2000,), float(n)), torch.full((2000,), p), generator=g).int().tolist():
            low, high = wilson_interval(k, n)
            covered += low <= p <= high
            total += 1
    assert 0.935 <= covered / total <= 0.965


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_format_interval():
    assert format_interval(50, 100) == "50.0 [40.4, 59.6]"


def class_sorted_labels(per_class: list[int]) -> torch.Tensor:
    """Labels stored class by class, as the CIFAR-10 test split in the shared tarball is."""
    return torch.cat([torch.full((count,), c) for c, count in enumerate(per_class)])


def test_stratified_order_is_a_permutation_with_balanced_prefixes():
    labels = class_sorted_labels([100] * 10)
    order = stratified_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(1000))
    for k in (10, 37, 500, 999):
        counts = torch.bincount(labels[order[:k]], minlength=10)
        assert counts.max() - counts.min() <= 1, k
    assert torch.equal(order, stratified_order(labels, seed=0))
    assert not torch.equal(order, stratified_order(labels, seed=1))
    # Within a class the choice is random, not the first images of it.
    first_of_class0 = order[labels[order] == 0][:50]
    assert first_of_class0.float().mean() > 30  # the first 50 would average 24.5


def test_stratified_order_with_unequal_classes_takes_what_each_has():
    labels = class_sorted_labels([3, 10, 1])
    order = stratified_order(labels, seed=2)
    assert sorted(order.tolist()) == list(range(14))
    assert sorted(labels[order[:3]].tolist()) == [0, 1, 2]
    assert labels[order[-6:]].tolist() == [1] * 6  # the big class alone at the end


def test_stratified_prefix():
    labels = class_sorted_labels([5, 5])
    assert torch.equal(stratified_prefix(labels, None, 0), torch.arange(10))
    assert torch.equal(stratified_prefix(labels, 20, 0), torch.arange(10))
    pick = stratified_prefix(labels, 4, 0)
    assert pick.tolist() == sorted(pick.tolist()) and torch.bincount(labels[pick]).tolist() == [2, 2]


@pytest.fixture(scope="module")
def class_sorted_eval(tmp_path_factory):
    """A tiny 4-class model evaluated on a test set stored class by class."""
    classes = ["a", "b", "c", "d"]
    torch.manual_seed(0)
    model = build_model("preact18", 4, [0.5] * 3, [0.25] * 3, 0.0625).eval()
    meta = {"arch": "preact18", "width": 0.0625, "num_classes": 4, "classes": classes, "input_size": [3, 8, 8],
            "mean": [0.5] * 3, "std": [0.25] * 3, "method": "standard", "eps": 8 / 255}  # fmt: skip
    directory = bundle.save(model, meta, tmp_path_factory.mktemp("b") / "bundle")
    labels = class_sorted_labels([20] * 4)
    images = torch.randint(0, 256, (80, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    test_set = ArrayDataset(images, labels, classes)
    real = evaluation_attack

    def cheap(name, eps, num_classes, seed=0):
        """AutoAttack's four stages stood in for by FGSM and PGD-3: the subsets, not the attacks, are tested."""
        if name != "autoattack":
            return real(name, eps, num_classes, seed)
        return [NamedAttack("fgsm", eps, real("fgsm", eps, num_classes)[0].run),
                NamedAttack("pgd3", eps, real("pgd3", eps, num_classes)[0].run)]  # fmt: skip

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "evaluation_attack", cheap)
        return evaluate.evaluate_bundle(
            bundle.load(directory), test_set, ["fgsm", "autoattack"], 8 / 255, n=40, n_autoattack=8, curve_n=12
        )


def test_autoattack_and_curve_subsets_cover_every_class(class_sorted_eval):
    r = class_sorted_eval
    assert r["n_eval"] == 40 and r["n_eval_autoattack"] == 8 and r["n_curve"] == 12
    assert r["autoattack_per_class"] == [2, 2, 2, 2]  # the first 8 of 40 class-sorted images would be 1-2 classes
    assert r["attacks_n"] == {"fgsm": 40, "autoattack": 8}


def test_every_accuracy_has_its_wilson_interval(class_sorted_eval):
    r = class_sorted_eval

    def check(accuracy: float, interval: list[float], n: int) -> None:
        k = round(accuracy * n)
        assert k == pytest.approx(accuracy * n)
        assert interval == pytest.approx(list(wilson_interval(k, n)))

    check(r["clean"], r["clean_ci95"], r["n_eval"])
    for name, accuracy in r["attacks"].items():
        check(accuracy, r["attacks_ci95"][name], r["attacks_n"][name])
    for stage, accuracy in r["autoattack_stages"].items():
        check(accuracy, r["autoattack_stages_ci95"][stage], r["n_eval_autoattack"])
    check(r["autoattack_clean"], r["autoattack_clean_ci95"], r["n_eval_autoattack"])
    for point in r["curve"]:
        assert point["n"] == 12
        check(point["accuracy"], point["ci95"], 12)
    table = markdown_table([{**r, "bundle": "x/bundle"}])
    clean_cell = format_interval(round(r["clean"] * 40), 40)
    assert f"| bundle | standard | 40 | {clean_cell} |" in table
    assert "autoattack on 8" in table and "95% Wilson interval" in table


def _outcomes(both: int, first_only: int, second_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    first = [True] * both + [True] * first_only + [False] * second_only + [False] * neither
    second = [True] * both + [False] * first_only + [True] * second_only + [False] * neither
    return first, second


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 9), (12, 5), (31, 31), (0, 7)])
def test_paired_difference_matches_an_exact_mcnemar_test_and_the_per_image_variance(b, c):
    """The p-value is the exact two-sided binomial tail of the discordant pairs, written out; the interval is
    the difference +- z times the standard error of the mean per-image difference (-1, 0 or +1)."""
    from training.stats import paired_difference

    first, second = _outcomes(40, b, c, 60)
    result = paired_difference(first, second)
    n = len(first)
    assert result["difference"] == pytest.approx((c - b) / n)
    m = b + c
    exact = min(1.0, 2 * sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2**m) if m else 1.0
    assert result["p_value"] == pytest.approx(exact, rel=1e-9)
    per_image = torch.tensor([float(y) - float(x) for x, y in zip(first, second, strict=True)], dtype=torch.float64)
    standard_error = math.sqrt(per_image.var(unbiased=False).item() / n)
    assert result["ci95_high"] - result["difference"] == pytest.approx(Z95 * standard_error, abs=1e-12)
    assert result["difference"] - result["ci95_low"] == pytest.approx(Z95 * standard_error, abs=1e-12)


def test_paired_difference_ignores_concordant_images_and_is_antisymmetric():
    from training.stats import paired_difference

    first, second = _outcomes(10, 4, 11, 5)
    more_first, more_second = _outcomes(500, 4, 11, 300)
    forward, swapped = paired_difference(first, second), paired_difference(second, first)
    assert swapped["difference"] == pytest.approx(-forward["difference"]) and swapped["p_value"] == forward["p_value"]
    assert paired_difference(more_first, more_second)["p_value"] == forward["p_value"]  # only b and c matter
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])
