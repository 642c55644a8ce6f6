"""One rank of the DDP agreement test (run by torchrun from test_distributed.py): one epoch of the real Trainer
on this rank's shard, then this rank's weights before and after, and a fingerprint of its first batch, saved for
the test to compare.  Usage: ddp_rank.py DATA_DIR OUT_DIR."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from training.data import iterate_batches
from training.distributed import shutdown
from training.trainer import TrainConfig, Trainer


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def main(data_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig(
        method="standard", width=0.0625, data_dir=data_dir, out=out, epochs=1, batch_size=8, lr=0.05,
        holdout=8, holdout_eval=8, device="cpu", cache_dir=str(Path(out) / "cache"), seed=3,
    )  # fmt: skip
    trainer = Trainer(cfg)
    before = flat(trainer.model)
    generator = trainer._seed_epoch(0)
    shard = iterate_batches(trainer.train_set, 8, generator, rank=trainer.dist.rank, world_size=trainer.dist.world_size)
    first_images, _ = next(iter(shard))
    trainer.train_epoch(0, None)
    torch.save(
        {
            "world_size": trainer.dist.world_size,
            "steps": trainer.steps_per_epoch,
            "before": before,
            "after": flat(trainer.model),
            "first_batch": hashlib.sha256(first_images.numpy().tobytes()).hexdigest(),
        },
        Path(out) / f"rank{trainer.dist.rank}.pt",
    )
    shutdown(trainer.dist)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
