"""Train the perturbation detector for a pair of bundles; writes a bundle beside the robust one.

    python -m worker.train_detector --robust models/otjr-preact18-w0.125 \
        --standard models/standard-preact18-w0.125 --data-dir ../shared/data/cifar10-jpeg.tar.gz

The detector (``training.models.perturbation_cnn``) learns "clean or benignly changed" against "adversarial"
from images of the TRAINING split that neither model trained on.  Each chosen image appears three times: as
it is, after one benign change (half of them mild Gaussian noise of 1-3/255, the nearest benign look-alike of
a small perturbation; the rest JPEG re-compression, resizing or blur), and attacked (PGD or CW-inf at
4-16/255 against the standard or the robust model, or the black-box Square at 4 and 8/255 against the
standard one, whose sparse square patches look nothing like PGD's dense noise; saved to 8 bits).  Pairing
the three copies of one image makes the perturbation, not the picture, the only thing that separates the
classes.  Attacks at 2/255 are left out on purpose: they are as strong as the mild noise the detector must
let through.

The images it trains on are recorded (seed and count) in the bundle, and ``worker.calibrate`` leaves them
out, so the threshold is set on images the detector has never seen.  The last ``--holdout`` of the chosen
images are kept out of training and measured; the numbers land in the bundle's ``metrics``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from training import bundle as bundle_io
from training.bundle import Bundle
from training.bundle import load as load_bundle
from training.data import load_splits, to_float
from training.models import build_model
from worker.benign import BENIGN, mild_noise
from worker.calibrate import AttackSpec, attack_all, detector_images, make_progress, unseen_pool
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine.engine import Engine, default_detector_dir

ARCH = "perturbation-cnn"
METHOD = "perturbation-detector"

# What the detector learns to flag: eps 4/255 and up, PGD and CW-inf against both models, Square (black box).
TRAINING_ATTACKS: tuple[AttackSpec, ...] = (
    AttackSpec("standard", "pgd", 4),
    AttackSpec("standard", "pgd", 6),
    AttackSpec("standard", "pgd", 8),
    AttackSpec("standard", "pgd", 16),
    AttackSpec("standard", "cw", 4),
    AttackSpec("standard", "cw", 8),
    AttackSpec("robust", "pgd", 4),
    AttackSpec("robust", "pgd", 8),
    AttackSpec("robust", "pgd", 16),
    AttackSpec("standard", "square", 4),
    AttackSpec("standard", "square", 8),
)
NOISE_SIGMA_RANGE = (1 / 255, 3 / 255)


def benign_copies(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One benign change per image: mild noise of random strength for every other one, the rest round-robin."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty_like(x)
    noisy = torch.arange(0, len(x), 2)
    low, high = NOISE_SIGMA_RANGE
    sigma = torch.empty(len(noisy)).uniform_(low, high, generator=generator).view(-1, 1, 1, 1)
    out[noisy] = mild_noise(x[noisy], generator, sigma)  # one strength per image
    others = [name for name in BENIGN if BENIGN[name] is not mild_noise]
    rest = torch.arange(1, len(x), 2)
    for k, name in enumerate(others):
        idx = rest[k :: len(others)]
        if len(idx):
            out[idx] = BENIGN[name](x[idx], generator)
    return out


def logit_scores(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The detector's adversarial-minus-clean logit per image (monotone in the served score)."""
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            out = model(x[start : start + batch])
            parts.append(out[:, det.ADVERSARIAL_CLASS] - out[:, det.CLEAN_CLASS])
    return torch.cat(parts).cpu() if parts else torch.empty(0)


def fit(
    model: nn.Module,
    negatives: torch.Tensor,
    positives: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    console: Console,
) -> list[float]:
    """SGD with a one-cycle schedule and horizontal flips; both classes weigh the same.  Returns epoch losses."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    x = torch.cat([negatives, positives])
    y = torch.cat([torch.zeros(len(negatives)), torch.ones(len(positives))]).long()
    class_weight = torch.tensor([len(x) / (2 * len(negatives)), len(x) / (2 * len(positives))], device=device)
    steps_per_epoch = len(x) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(x)} training images")
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    with make_progress(console) as progress:
        task = progress.add_task("training the detector", total=epochs * steps_per_epoch)
        for _epoch in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                xb, yb = x[idx].to(device), y[idx].to(device)
                flip = torch.rand(len(idx), generator=generator).to(device) < 0.5
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
                loss = F.cross_entropy(model(xb), yb, weight=class_weight)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item()
                progress.advance(task)
            losses.append(total / steps_per_epoch)
    model.eval()
    return losses


def held_out_metrics(
    model: nn.Module, clean: torch.Tensor, benign: torch.Tensor, adversarial: torch.Tensor, target_fpr: float
) -> dict[str, Any]:
    """AUROC and TPR at the operating point the calibration uses (no clean or benign group above target)."""
    s_clean, s_benign, s_adv = (logit_scores(model, v) for v in (clean, benign, adversarial))
    threshold = calib.operating_threshold(s_clean, {"benign": s_benign}, target_fpr)
    return {
        "holdout_n": len(clean),
        "holdout_auroc": calib.roc_auc(s_clean, s_adv),
        "holdout_tpr": calib.flag_rate(s_adv, threshold),
        "holdout_clean_flag_rate": calib.flag_rate(s_clean, threshold),
        "holdout_benign_flag_rate": calib.flag_rate(s_benign, threshold),
        "target_fpr": target_fpr,
    }


def metadata(
    robust: Bundle, standard: Bundle, args: argparse.Namespace, n_train: int, info: dict[str, Any]
) -> dict[str, Any]:
    return {
        "arch": ARCH,
        "width": args.width,
        "num_classes": len(det.DETECTOR_CLASSES),
        "classes": list(det.DETECTOR_CLASSES),
        "input_size": robust.metadata["input_size"],
        "mean": robust.metadata["mean"],
        "std": robust.metadata["std"],
        "method": METHOD,
        "dataset": info["dataset"],
        "data_source": info["source"],
        "for_bundles": {"robust": robust.version, "standard": standard.version},
        "training": {
            "kind": METHOD,
            "seed": args.seed,
            "pool_images": args.n,
            "train_images": n_train,
            "pool": info["pool"],
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "attack_steps": args.steps,
            "attacks": [f"{s.name} (L-inf {s.objective}, eps {s.eps_255}/255 vs {s.target})" for s in TRAINING_ATTACKS],
            "benign": "half mild noise sigma 1-3/255, half " + ", ".join(n for n in BENIGN if n != "noise"),
        },
        "command": "python -m worker.train_detector " + shlex.join(args.argv),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.train_detector", description=__doc__.split("\n\n")[0])
    parser.add_argument("--robust", required=True, help="robust model bundle folder")
    parser.add_argument("--standard", required=True, help="standard companion bundle folder")
    parser.add_argument("--data-dir", required=True, help="the data set the bundles were trained on")
    parser.add_argument("--dataset", help="data set name (default: the robust bundle's)")
    parser.add_argument("--n", type=int, default=20000, help="pool images to use (each clean, benign, attacked)")
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of them kept out and measured")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=16, help="channels of the first convolutions")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps per attack")
    parser.add_argument("--target-fpr", type=float, default=calib.DEFAULT_TARGET_FPR, help="for the held-out TPR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cache-dir")
    parser.add_argument("--out", help="bundle folder (default: perturbation-detector/ in the robust bundle)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.n < 10 or not 0 < args.holdout < 1 or args.epochs < 1:
        parser.error("need --n >= 10, 0 < --holdout < 1 and --epochs >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    robust, standard = load_bundle(args.robust), load_bundle(args.standard)
    # An engine without detectors' calibration: only its models and device are used, for the attacks.
    engine = Engine(robust, standard, None, device=args.device, threads=args.threads, detectors=["kl_rs"])
    dataset = args.dataset or robust.metadata.get("dataset", "cifar10")
    splits = load_splits(dataset, args.data_dir, Path(args.cache_dir) if args.cache_dir else None)
    if splits.train.classes != engine.classes:
        console.print(f"[red]the data set's classes {splits.train.classes} differ from the bundle's {engine.classes}")
        return 2
    pool, pool_note = unseen_pool(len(splits.train), [robust, standard])
    try:
        chosen = detector_images(pool, args.seed, args.n)
    except ValueError as err:
        console.print(f"[red]{err}")
        return 2
    console.print(f"detector images: {args.n} of the {pool_note}")
    x = to_float(splits.train.images[chosen])
    y = splits.train.labels[chosen]

    with make_progress(console) as progress:
        adversarial, _names, fooled = attack_all(
            engine, x, y, args.steps, args.batch_size, args.seed, progress, mix=TRAINING_ATTACKS
        )
    benign = benign_copies(x, args.seed)
    # Square leaves the images its target already gets wrong untouched: those copies are clean, not positives.
    changed = (adversarial != x).flatten(1).any(1)
    console.print(
        f"attacks fooled their target on {fooled.float().mean():.1%} of the images; {int((~changed).sum())} "
        "copies left unchanged are not used as adversarial"
    )

    n_train = len(x) - max(1, round(args.holdout * len(x)))
    torch.manual_seed(args.seed)
    model = build_model(ARCH, 2, robust.metadata["mean"], robust.metadata["std"], args.width).to(engine.device)
    negatives = torch.cat([x[:n_train], benign[:n_train]])
    positives = adversarial[:n_train][changed[:n_train]]
    losses = fit(
        model, negatives, positives, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        console=console,
    )  # fmt: skip
    held_adversarial = adversarial[n_train:][changed[n_train:]]
    held = [v.to(engine.device) for v in (x[n_train:], benign[n_train:], held_adversarial)]
    metrics = {**held_out_metrics(model, *held, args.target_fpr), "final_loss": losses[-1]}
    info = {"dataset": dataset, "source": splits.source, "pool": pool_note}
    out = Path(args.out) if args.out else default_detector_dir(args.robust)
    bundle_io.save(model.cpu(), {**metadata(robust, standard, args, n_train, info), "metrics": metrics}, out)
    console.print(
        f"held out ({metrics['holdout_n']} images): AUROC {metrics['holdout_auroc']:.4f}, TPR "
        f"{metrics['holdout_tpr']:.3f} with clean {metrics['holdout_clean_flag_rate']:.2%} and benign "
        f"{metrics['holdout_benign_flag_rate']:.2%} flagged"
    )
    console.print(f"wrote {out}; recalibrate with `python -m worker.calibrate` (the detector changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
