"""Multi-process training through torchrun (gloo on the CPU stands in for NCCL on GPUs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from training import bundle

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_trains_otjr_with_two_processes(tiny_tarball: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port, so a busy 29500 cannot break the test
        "--nproc_per_node",
        "2",
        "-m",
        "training",
        "train",
        "--method",
        "otjr",
        "--width",
        "0.0625",
        "--data-dir",
        str(tiny_tarball),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--holdout",
        "8",
        "--holdout-eval",
        "8",
        "--attack-steps",
        "1",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best bundle:") == 1  # only rank 0 reports and writes

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["jr"] > 0 for r in records)  # the double backward ran under DistributedDataParallel
    trained = bundle.load(out / "last")
    assert trained.metadata["training"]["world_size"] == 2
    assert trained.metadata["method"] == "otjr"
