"""Seconds per training epoch of the fast adversarial-training configurations, from a few timed steps.

    .venv/bin/python benchmarks/epoch_time.py --widths 0.25 0.5 --threads 1 --steps 4 \
        --out results/benchmark_epoch_time.json

Each configuration (method x inner attack) trains ``--steps`` steps at batch 128 on random CIFAR-sized data
after one warm-up step; the median step time times the steps of one epoch on the full training set (49,000
images after the 1,000 held out, 382 steps) estimates an epoch, plus the per-epoch held-out check (clean,
FGSM and PGD-10 on 500 images).  Configurations are interleaved round by round, so load on a shared machine
hits them alike; the ratios are more trustworthy than the absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from training.attacks import fgsm, parse_eps, pgd
from training.methods import MethodConfig, get_method
from training.models import build_model

EPOCH_STEPS = 49_000 // 128
CONFIGS: dict[str, tuple[str, dict]] = {
    "standard": ("standard", {}),
    "pgd-at fgsm-rs": ("pgd-at", {"attack": "fgsm-rs"}),
    "pgd-at n-fgsm": ("pgd-at", {"attack": "n-fgsm"}),
    "pgd-at pgd-2": ("pgd-at", {"attack_steps": 2, "step_size": parse_eps("5/255"), "attack_start": "uniform"}),
    "pgd-at pgd-10": ("pgd-at", {}),
    "trades n-fgsm": ("trades", {"attack": "n-fgsm"}),
    "otjr fgsm-rs": ("otjr", {"attack": "fgsm-rs"}),
    "otjr n-fgsm": ("otjr", {"attack": "n-fgsm"}),
    "otjr pgd-2": ("otjr", {"attack_steps": 2, "step_size": parse_eps("5/255"), "attack_start": "uniform"}),
}


def holdout_check_seconds(model: torch.nn.Module, n: int = 500) -> float:
    model.eval()
    x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    started = time.perf_counter()
    with torch.no_grad():
        model(x)
    for i in range(0, n, 250):
        pgd(model, x[i : i + 250], y[i : i + 250], 8 / 255, 2 / 255, 10)
        fgsm(model, x[i : i + 250], y[i : i + 250], 8 / 255)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    rows = []
    with Progress(transient=True) as progress:
        for width in args.widths:
            models, optims = {}, {}
            for name in args.configs:
                models[name] = build_model("preact18", 10, [0.5] * 3, [0.25] * 3, width)
                optims[name] = torch.optim.SGD(models[name].parameters(), lr=0.01, momentum=0.9)
            times: dict[str, list[float]] = {name: [] for name in args.configs}
            task = progress.add_task(f"width {width}", total=(args.steps + 1) * len(args.configs))
            for round_ in range(args.steps + 1):  # round 0 warms up
                for name in args.configs:
                    method, overrides = CONFIGS[name]
                    model, optim = models[name], optims[name]
                    model.train()
                    started = time.perf_counter()
                    step = get_method(method)(model, x, y, MethodConfig(**overrides))
                    optim.zero_grad(set_to_none=True)
                    step.loss.backward()
                    optim.step()
                    if round_:
                        times[name].append(time.perf_counter() - started)
                    progress.advance(task)
            check = holdout_check_seconds(models[args.configs[0]])
            for name in args.configs:
                step_s = statistics.median(times[name])
                rows.append(
                    {
                        "width": width,
                        "config": name,
                        "step_s": round(step_s, 3),
                        "epoch_min": round((step_s * EPOCH_STEPS + check) / 60, 1),
                        "holdout_check_s": round(check, 1),
                    }
                )
    reference = {r["width"]: r["step_s"] for r in rows if r["config"] == "pgd-at fgsm-rs"}
    for r in rows:
        if r["width"] in reference:
            r["vs_fgsm_rs"] = round(r["step_s"] / reference[r["width"]], 2)
    table = Table(title=f"Training step at batch {args.batch_size}, {args.threads} thread(s); epoch = 382 steps")
    for column in ("width", "config", "step s", "x FGSM-RS PGD-AT", "epoch min (+check)"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for r in rows:
        table.add_row(
            str(r["width"]), r["config"], f"{r['step_s']:.3f}", str(r.get("vs_fgsm_rs", "-")), str(r["epoch_min"])
        )
    Console().print(table)
    summary = {
        "batch_size": args.batch_size,
        "threads": args.threads,
        "steps": args.steps,
        "load_average": list(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else None,
        "rows": rows,
    }
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
