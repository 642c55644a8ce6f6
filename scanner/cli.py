"""The ``scanner`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from scanner.demo import DEFAULT_DATA, MODELS_DIR

    parser = argparse.ArgumentParser(prog="scanner", description="Find adversarial images; serve robust models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the bundled robust and standard models on clean and attacked images")
    demo.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 ImageFolder tarball or tree")
    demo.add_argument("--robust", type=Path, default=MODELS_DIR / "otjr-preact18-w0.125")
    demo.add_argument("--standard", type=Path, default=MODELS_DIR / "standard-preact18-w0.125")
    demo.add_argument("-n", type=int, default=20, help="how many test images")
    demo.add_argument("--eps", default="8/255")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from scanner.demo import run_demo
        from training.bundle import BundleError
        from training.data import DataError

        if not args.data.exists():
            print(
                f"error: demo images not found at {args.data}; pass --data (see shared/data/README.md)", file=sys.stderr
            )
            return 2
        try:
            run_demo(args.data, args.robust, args.standard, args.n, args.eps, args.seed)
        except (BundleError, DataError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0
