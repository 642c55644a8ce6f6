"""Cost of one training step of every method, relative to a PGD-AT step at the same batch and model.

What it measures
    For each method in ``training.methods.METHODS``: the wall-clock seconds of one full training step
    (the method's forward, which includes its inner PGD maximisation, then ``zero_grad``, ``backward`` and one
    SGD ``optimizer.step``, exactly the body of ``training/trainer.py``'s loop; on CUDA with channels_last
    and bfloat16 autocast as the trainer does) and the step's peak extra memory.  Everything is reported as a
    ratio to PGD-AT ("pgd-at").

    * Time: methods are interleaved round-robin (each repeat runs one step of every method in turn), so machine
      noise hits all of them alike; the median seconds per step is reported, and the ratios in the table are
      paired: the median over repeats of (this method's step / the reference's step in the same repeat), which
      a shared machine's slow drifts affect less than a ratio of medians (also in the JSON, as time_ratio).
    * CPU time: on a CPU the same steps' process CPU seconds (``time.process_time``) and their paired ratios
      too.  With ``--threads 1`` that is the step's own work, which other processes on a shared machine slow
      far less than its wall time (on CUDA it is only the launching).
    * Memory on CUDA: ``max_memory_allocated`` during the step minus what was allocated just before it.
    * Memory on CPU: each method runs warmup + 2 steps in a fresh subprocess of this script; its peak resident
      set (``os.wait4`` rusage ``ru_maxrss``) minus that of a baseline subprocess that builds the same model and
      data but takes no step (every child first primes itself with a two-image step of every method of the
      run, so the one-off cost of loading and initialising kernels is in the baseline, not in the step).

    Data are random CIFAR-shaped batches (3x32x32, 10 classes) from a fixed seed; every method trains its own
    copy of the same initial model with its own optimizer.

    A contestant is a method name or a method with MethodConfig settings of its own,
    ``otjr:jr_mode=finite-difference:jr_fraction=0.5``, so variants of one method are timed side by side in one
    run; ``--config key=value,...`` sets MethodConfig fields for every contestant (``attack=n-fgsm``).  Beside
    the ratio to PGD-AT, each contestant's time is given as a ratio to exact OTJR's (plain ``otjr``) when that
    is in the run.

Target
    An OTJR step costs at most 1.35x a PGD-AT step (``TARGET_OTJR_RATIO``).

Usage
    python benchmarks/train_step.py [--arch preact18] [--width W] [--batch-size 128] [--steps 5] [--warmup 1]
                                    [--device auto] [--methods otjr,pgd-at,otjr:jr_mode=finite-difference]
                                    [--config attack=n-fgsm] [--threads N] [--json-only]

The rich table goes to stdout, followed by one final JSON line (only that line with ``--json-only``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, fields, replace

import torch
from rich.console import Console
from rich.table import Table

from training.methods import METHODS, Method, MethodConfig, get_method
from training.models import build_model
from training.trainer import training_autocast

BASELINE = "pgd-at"
EXACT_OTJR = "otjr"  # the second reference: OTJR with the exact Jacobian term
TARGET_OTJR_RATIO = 1.35
NO_STEP = "none"  # the memory baseline child: model and data built, no step taken
SEED = 0
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The trainer's optimiser settings (training/trainer.py TrainConfig defaults).
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 2e-4
MIB = 2**20


@dataclass
class Contestant:
    """One method with its own settings, model copy and optimiser, and what was measured for it."""

    name: str  # the contestant spec: a method name, or a method with settings
    method: Method
    cfg: MethodConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds of the same steps
    peak_bytes: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--arch", default="preact18")
    parser.add_argument("--width", type=float, help="channel multiplier (default: 0.125 on CPU, 1.0 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma list of methods or method:key=value:... variants; pgd-at is always added",
    )
    parser.add_argument("--config", default="", help="key=value,... MethodConfig settings for every contestant")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    parser.add_argument("--child-memory", metavar="METHOD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("need --steps >= 1, --warmup >= 0 and --batch-size >= 1")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def method_names(text: str) -> list[str]:
    """The requested contestants: plain methods in METHODS order, then variants as given; pgd-at always."""
    specs = list(dict.fromkeys(spec.strip() for spec in text.split(",") if spec.strip()))
    plain = {spec for spec in specs if ":" not in spec} | {BASELINE}
    unknown = {spec.split(":")[0] for spec in specs} - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    return [name for name in METHODS if name in plain] + [spec for spec in specs if ":" in spec]


def parse_settings(pairs: list[str], base: MethodConfig) -> MethodConfig:
    """``base`` with ``key=value`` settings, each value read as its field's type."""
    types = {f.name: type(getattr(base, f.name)) for f in fields(MethodConfig)}
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"bad setting {pair!r}: need key=value with a MethodConfig field as key")
        kind = float if types[key] is type(None) else types[key]  # the attacks' optional step and noise
        values[key] = kind(value)
    return replace(base, **values)


def contestant_config(spec: str, common: MethodConfig) -> tuple[str, MethodConfig]:
    """The method name and MethodConfig of a contestant spec ``method[:key=value...]``."""
    name, *pairs = spec.split(":")
    return name, parse_settings(pairs, common)


def common_config(text: str) -> MethodConfig:
    return parse_settings([pair.strip() for pair in text.split(",") if pair.strip()], MethodConfig())


def make_batch(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch in [0, 1] of CIFAR shape, laid out as the trainer lays it out."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.rand(batch_size, *IMAGE_SHAPE, generator=generator).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def make_model(arch: str, width: float, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = build_model(arch, NUM_CLASSES, CIFAR10_MEAN, CIFAR10_STD, width).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def make_contestant(spec: str, model: torch.nn.Module, common: MethodConfig) -> Contestant:
    name, cfg = contestant_config(spec, common)
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return Contestant(spec, get_method(name), cfg, model, optimizer)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """The trainer's autocast: bfloat16 on CUDA (amp on by default), none on CPU."""
    return training_autocast(device.type, device.type == "cuda")


def train_step(c: Contestant, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    """The trainer's loop body: method forward under autocast, zero_grad, backward, optimiser step."""
    with autocast_for(device):
        step = c.method(c.model, x, y, c.cfg)
    c.optimizer.zero_grad(set_to_none=True)
    step.loss.backward()
    c.optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(c: Contestant, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Run one step; return its wall and process CPU seconds and, on CUDA, record its peak extra memory."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    train_step(c, x, y, device)
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if device.type == "cuda":
        c.peak_bytes = max(c.peak_bytes, torch.cuda.max_memory_allocated(device) - before)
    return seconds, cpu_seconds


def run_round_robin(contestants: list[Contestant], args: argparse.Namespace, device: torch.device) -> None:
    """Warm up, then time ``args.steps`` repeats, each one step of every method in turn."""
    x, y = make_batch(args.batch_size, device)
    for repeat in range(args.warmup + args.steps):
        for c in contestants:
            seconds, cpu_seconds = timed_step(c, x, y, device)
            if repeat >= args.warmup:
                c.times.append(seconds)
                c.cpu_times.append(cpu_seconds)


# --- CPU memory: one fresh subprocess per method ------------------------------------------------------------
def child_memory(args: argparse.Namespace) -> None:
    """Body of a memory child: build model and data, then take warmup + 2 steps (none for the baseline).

    Every child, the baseline included, first primes the process with one two-image step of every method of
    the run on a throwaway copy of the model.  The first use of each code path faults in library pages and
    initialises kernels (a few hundred MiB of resident memory, more than a small model's step): a one-off
    cost that is not the step's, so it belongs in the baseline that is subtracted.
    """
    device = torch.device("cpu")
    model = make_model(args.arch, args.width, device)
    x, y = make_batch(args.batch_size, device)
    common = common_config(args.config)
    for spec in method_names(args.methods):
        train_step(make_contestant(spec, model, common), x[:2], y[:2], device)
    if args.child_memory != NO_STEP:
        c = make_contestant(args.child_memory, model, common)
        for _ in range(args.warmup + 2):
            train_step(c, x, y, device)


def child_max_rss_kib(method: str, args: argparse.Namespace) -> int:
    """Peak resident set (KiB) of a fresh child of this script running ``method``."""
    argv = [sys.executable, os.path.abspath(__file__), "--child-memory", method, "--device", "cpu",
            "--arch", args.arch, "--width", str(args.width), "--batch-size", str(args.batch_size),
            "--warmup", str(args.warmup), "--methods", args.methods, "--config", args.config]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]  # keep stdout for the table and JSON
    pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=quiet)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"memory child for {method!r} failed with status {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss


def measure_cpu_memory(names: list[str], args: argparse.Namespace, log: Console) -> dict[str, int]:
    """Each method's peak memory (bytes) above a no-step child's, one fresh child per method.

    Call this before the parent allocates much: on Linux a spawned child's ru_maxrss starts from the parent's
    high-water RSS at the moment of exec, so a parent that has already trained would mask the children.
    """
    baseline = child_max_rss_kib(NO_STEP, args)
    extra = {}
    for name in names:
        log.print(f"memory child: {name}")
        extra[name] = child_max_rss_kib(name, args) - baseline
        if extra[name] <= 0:
            log.print(f"[yellow]warning: {name} shows no memory above the no-step baseline[/yellow]")
    return {name: max(0, kib) * 1024 for name, kib in extra.items()}


# --- report ----------------------------------------------------------------------------------------------
def summarise(contestants: list[Contestant]) -> dict[str, dict[str, float | list[float] | None]]:
    base = next(c for c in contestants if c.name == BASELINE)
    base_time, base_peak = statistics.median(base.times), base.peak_bytes
    exact = next((c for c in contestants if c.name == EXACT_OTJR), None)
    results = {}
    for c in contestants:
        median = statistics.median(c.times)
        results[c.name] = {
            "median_s": median,
            "time_ratio": median / base_time,
            "paired_time_ratio": paired_ratio(c.times, base.times),
            "paired_otjr_time_ratio": paired_ratio(c.times, exact.times) if exact else None,
            "peak_mib": c.peak_bytes / MIB,
            "memory_ratio": c.peak_bytes / base_peak if base_peak else None,
            "times_s": c.times,
            "median_cpu_s": statistics.median(c.cpu_times),
            "paired_cpu_ratio": paired_ratio(c.cpu_times, base.cpu_times),
            "paired_otjr_cpu_ratio": paired_ratio(c.cpu_times, exact.cpu_times) if exact else None,
        }
    return results


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """Median over repeats of the ratio of two methods' steps in the same repeat."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def report(args: argparse.Namespace, device: torch.device, results: dict) -> dict:
    otjr = results.get("otjr")
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "arch": args.arch,
        "width": args.width,
        "batch": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "baseline": BASELINE,
        "config": args.config,
        "memory": "cuda max_memory_allocated minus allocated before the step" if device.type == "cuda"
        else "child ru_maxrss minus a primed no-step child's",
        "target_otjr_time_ratio": TARGET_OTJR_RATIO,
        "otjr_within_target": None if otjr is None else otjr["paired_time_ratio"] <= TARGET_OTJR_RATIO,
        "results": results,
    }


def render_table(summary: dict) -> Table:
    table = Table(title=f"train step vs {BASELINE}: {summary['arch']} width {summary['width']}, "
                        f"{summary['config'] or 'default settings'}, "
                        f"batch {summary['batch']}, {summary['steps']} steps, {summary['device']}")
    cpu = summary["device"] == "cpu"
    columns = ["method", "median s/step", f"x {BASELINE} time", f"x {EXACT_OTJR} time"]
    columns += [f"x {BASELINE} cpu", f"x {EXACT_OTJR} cpu"] if cpu else []
    columns += ["peak MiB", f"x {BASELINE} memory"]
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, r in summary["results"].items():
        ratios = [r["paired_time_ratio"], r["paired_otjr_time_ratio"]]
        ratios += [r["paired_cpu_ratio"], r["paired_otjr_cpu_ratio"]] if cpu else []
        table.add_row(name, f"{r['median_s']:.3f}", *("-" if v is None else f"{v:.2f}" for v in ratios),
                      f"{r['peak_mib']:.1f}", "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}")
    table.caption = "time and cpu ratios paired: median over repeats of the ratio within a repeat"
    if summary["otjr_within_target"] is not None:
        verdict = "meets" if summary["otjr_within_target"] else "MISSES"
        table.caption += f"; otjr {verdict} the target of <= {TARGET_OTJR_RATIO}x {BASELINE} time"
    return table


def measure(args: argparse.Namespace, device: torch.device, log: Console) -> list[Contestant]:
    """Time every method round-robin and find its peak memory (CPU: in children, first; CUDA: while timing)."""
    names = method_names(args.methods)
    # On CPU memory comes first, while this process is still small (see measure_cpu_memory).
    cpu_peaks = measure_cpu_memory(names, args, log) if device.type == "cpu" else {}
    model = make_model(args.arch, args.width, device)
    common = common_config(args.config)
    contestants = [make_contestant(spec, model, common) for spec in names]
    log.print(f"timing {len(contestants)} methods round-robin on {device}")
    run_round_robin(contestants, args, device)
    for c in contestants:
        c.peak_bytes = cpu_peaks.get(c.name, c.peak_bytes)
    return contestants


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.width is None:
        args.width = 1.0 if device.type == "cuda" else 0.125
    if args.child_memory:
        child_memory(args)
        sys.stderr.flush()
        os._exit(0)  # skip interpreter teardown: it touches ~150 MiB more than the steps and would set the peak
    log = Console(stderr=True, quiet=args.json_only)
    summary = report(args, device, summarise(measure(args, device, log)))
    if not args.json_only:
        Console(width=max(120, 110 + max(map(len, summary["results"])))).print(render_table(summary))  # whole specs
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
