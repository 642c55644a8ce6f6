"""``scanner demo``: the bundled robust model beside its standard companion, on clean and attacked images.

In-process and offline: it reads a seeded sample of the CIFAR-10 test images, perturbs half of them with
PGD against the *standard* model (the attack a careless service would face), and shows what each model
sees.  The standard model is fooled by the perturbed images; the OTJR model mostly is not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from scanner.cli import DEFAULT_DATA, MODELS_DIR  # noqa: E402,F401 - one definition, re-exported
from training.attacks import parse_eps, pgd, predict
from training.bundle import load
from training.data import load_splits, seeded_subset, to_float


def run_demo(data: Path, robust_dir: Path, standard_dir: Path, n: int, eps_text: str, seed: int) -> dict[str, float]:
    console = Console()
    robust, standard = load(robust_dir), load(standard_dir)
    console.print(f"robust model   {robust.metadata['method']} {robust.metadata['arch']} v{robust.version}")
    console.print(f"standard model {standard.metadata['method']} {standard.metadata['arch']} v{standard.version}")
    test = seeded_subset(load_splits("cifar10", data).test, n, seed)
    x, y = to_float(test.images), test.labels
    torch.manual_seed(seed)
    attacked = torch.arange(n) % 2 == 1
    eps = parse_eps(eps_text)
    x[attacked] = pgd(standard.model, x[attacked], y[attacked], eps, 2 / 255, 20)
    standard_pred, robust_pred = predict(standard.model, x), predict(robust.model, x)

    classes = robust.classes
    table = Table(
        title=f"{n} test images, every second one perturbed by PGD-20 at eps {eps_text} against the standard model"
    )
    for column in ("#", "true", "perturbed", "standard model", "robust model"):
        table.add_column(column)
    for i in range(n):

        def cell(pred: torch.Tensor, i: int = i) -> str:
            name = classes[int(pred[i])]
            return f"[green]{name}[/]" if pred[i] == y[i] else f"[red]{name}[/]"

        table.add_row(str(i), classes[int(y[i])], "yes" if attacked[i] else "", cell(standard_pred), cell(robust_pred))
    console.print(table)
    summary = {
        "standard_clean": (standard_pred == y)[~attacked].float().mean().item(),
        "standard_attacked": (standard_pred == y)[attacked].float().mean().item(),
        "robust_clean": (robust_pred == y)[~attacked].float().mean().item(),
        "robust_attacked": (robust_pred == y)[attacked].float().mean().item(),
    }
    console.print(
        f"standard model: {100 * summary['standard_clean']:.0f}% right on clean, "
        f"{100 * summary['standard_attacked']:.0f}% on perturbed images\n"
        f"robust model:   {100 * summary['robust_clean']:.0f}% right on clean, "
        f"{100 * summary['robust_attacked']:.0f}% on perturbed images"
    )
    return summary
