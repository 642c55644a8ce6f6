"""Multi-process training through torchrun (gloo on the CPU stands in for NCCL on GPUs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import bundle

pytestmark = pytest.mark.slow  # torchrun with two processes

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


def test_ranks_training_on_different_shards_end_with_the_same_weights(tiny_tarball: Path, tmp_path: Path) -> None:
    """DistributedDataParallel averages the gradients of the ranks: after an epoch on different shards, both
    ranks hold the same weights.  Without it, each rank would follow its own shard's gradients and diverge."""
    out = tmp_path / "ddp"
    out.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "training" / "ddp_rank.py"), str(tiny_tarball), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{rank}.pt") for rank in (0, 1)]
    assert all(r["world_size"] == 2 and r["steps"] >= 1 for r in ranks)
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"], "the ranks must see different shards"
    assert torch.equal(ranks[0]["before"], ranks[1]["before"])  # the same initial weights (seeded)
    assert not torch.allclose(ranks[0]["after"], ranks[0]["before"])  # training moved them
    assert torch.allclose(ranks[0]["after"], ranks[1]["after"], rtol=0, atol=1e-6)
