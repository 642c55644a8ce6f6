"""Command line: ``python -m training train ...`` and ``python -m training eval ...``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from training.attacks import TRAINING_ATTACKS, parse_eps
from training.data import DATASETS, DataError
from training.methods import JR_MODES, METHODS, TERMS_PRECISIONS, MethodConfig
from training.models import ARCHITECTURES
from training.schedules import SCHEDULES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="Train and evaluate robust classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and export bundles (best and last)")
    train.add_argument("--method", choices=METHODS, required=True)
    train.add_argument("--arch", choices=ARCHITECTURES, default="preact18")
    train.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = the paper's model)")
    train.add_argument("--dataset", choices=DATASETS, default="cifar10")
    train.add_argument("--data-dir", help="torchvision files, idx files, or an ImageFolder tree / tarball")
    train.add_argument("--download", action="store_true", help="let torchvision download CIFAR (needs internet)")
    train.add_argument("--cache-dir", help="where decoded uint8 arrays are cached")
    train.add_argument("--out", required=True, help="run folder: metrics.jsonl, last.pt, best/ and last/ bundles")
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=0.1)
    train.add_argument("--weight-decay", type=float, default=2e-4)
    train.add_argument("--schedule", choices=SCHEDULES, default="piecewise")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train-limit", type=int, help="train on only this many images")
    train.add_argument("--holdout", type=int, default=1000, help="training images held out for best-checkpoint choice")
    train.add_argument("--holdout-eval", type=int, default=500, help="held-out images attacked after each epoch")
    train.add_argument("--device", default="auto")
    train.add_argument("--no-amp", action="store_true")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    defaults = MethodConfig()
    train.add_argument("--eps", default="8/255")
    train.add_argument(
        "--attack",
        choices=TRAINING_ATTACKS,
        default=defaults.attack,
        help="inner attack: pgd (--attack-steps, --step-size, --attack-start), fgsm-rs (Wong et al. 2020) or "
        "n-fgsm (de Jorge et al. 2022), both single-step",
    )
    train.add_argument("--step-size", type=parse_eps, default=defaults.step_size, help="PGD step (0.007 or 2/255)")
    train.add_argument("--attack-steps", type=int, default=defaults.attack_steps)
    train.add_argument("--attack-start", choices=("normal", "uniform"), default=defaults.attack_start)
    train.add_argument(
        "--attack-alpha", type=parse_eps, help="single-step attack's step (default: 1.25 eps fgsm-rs, eps n-fgsm)"
    )
    train.add_argument("--attack-noise", type=parse_eps, help="n-fgsm's uniform noise half-width (default 2 eps)")
    train.add_argument("--co-drop", type=float, default=0.1, help="catastrophic overfitting: held-out PGD-10 drop")
    train.add_argument("--co-gap", type=float, default=0.2, help="catastrophic overfitting: FGSM minus PGD-10 gap")
    train.add_argument("--stop-on-co", action="store_true", help="stop when catastrophic overfitting is detected")
    train.add_argument("--beta-sw", type=float, default=defaults.beta_sw)
    train.add_argument("--beta-jr", type=float, default=defaults.beta_jr)
    train.add_argument("--n-projections", type=int, default=defaults.n_projections)
    train.add_argument("--trades-beta", type=float, default=defaults.trades_beta)
    train.add_argument(
        "--jr-mode",
        choices=JR_MODES,
        default=defaults.jr_mode,
        help="Jacobian term: exact (double backward) or finite-difference (one extra forward, no double backward)",
    )
    train.add_argument(
        "--jr-step",
        type=float,
        default=defaults.jr_step,
        help="finite-difference step: RMS per-image L2 move in pixel units",
    )
    train.add_argument(
        "--jr-fraction", type=float, default=defaults.jr_fraction, help="Jacobian term on this random part of a batch"
    )
    train.add_argument(
        "--terms-precision",
        choices=TERMS_PRECISIONS,
        default=defaults.terms_precision,
        help="SW/JR and the forwards they read: fp32 (autocast off) or under the bf16 autocast (--no-amp aside)",
    )
    train.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")

    evaluate = sub.add_parser("eval", help="evaluate bundles under attack; writes JSON, Markdown and a PNG curve")
    evaluate.add_argument("--bundle", action="append", required=True, help="bundle folder (repeat to compare)")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--attacks", default="pgd20,cw,autoattack", help="comma list of fgsm, pgdN, cw, autoattack")
    evaluate.add_argument("--eps", default="8/255")
    evaluate.add_argument("--n", type=int, default=1000, help="seeded random test subset size")
    evaluate.add_argument(
        "--n-autoattack", type=int, help="AutoAttack on a seeded class-stratified N of them (default: all)"
    )
    evaluate.add_argument(
        "--curve-n", type=int, help="robustness curve on a seeded class-stratified N of them (default: all)"
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", default="eval")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.command == "train":
            return _train(args, argv)
        return _eval(args)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from training.trainer import TrainConfig, Trainer

    method_config = MethodConfig(
        eps=parse_eps(args.eps),
        step_size=args.step_size,
        attack_steps=args.attack_steps,
        attack_start=args.attack_start,
        attack=args.attack,
        attack_alpha=args.attack_alpha,
        attack_noise=args.attack_noise,
        beta_sw=args.beta_sw,
        beta_jr=args.beta_jr,
        n_projections=args.n_projections,
        trades_beta=args.trades_beta,
        jr_mode=args.jr_mode,
        jr_step=args.jr_step,
        jr_fraction=args.jr_fraction,
        terms_precision=args.terms_precision,
    )
    cfg = TrainConfig(
        method=args.method,
        arch=args.arch,
        width=args.width,
        dataset=args.dataset,
        data_dir=args.data_dir,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        seed=args.seed,
        train_limit=args.train_limit,
        holdout=args.holdout,
        holdout_eval=args.holdout_eval,
        co_drop=args.co_drop,
        co_gap=args.co_gap,
        stop_on_co=args.stop_on_co,
        device=args.device,
        amp=not args.no_amp,
        resume=args.resume,
        download=args.download,
        cache_dir=args.cache_dir,
        method_config=method_config,
        command="python -m training " + shlex.join(argv),
    )
    trainer = Trainer(cfg)
    is_main = trainer.dist.is_main
    best = trainer.fit()
    if is_main:
        print(f"best bundle: {best}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from training.evaluate import run_eval
    from training.trainer import pick_device

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    run_eval(
        args.bundle,
        args.data_dir,
        attacks,
        parse_eps(args.eps),
        args.n,
        args.n_autoattack,
        args.seed,
        Path(args.out),
        pick_device(args.device),
        args.curve_n,
    )
    return 0
