"""The training loop: seeded, resumable, logged, and ready for torchrun.

Every epoch draws its randomness (data order, augmentation, attack starts, SW directions) from seeds derived
from (seed, epoch), and a checkpoint is written after every epoch, so a run resumed from its last checkpoint
computes exactly what the uninterrupted run would have.  The best checkpoint is chosen by PGD accuracy
(clean accuracy for standard training) on a held-out slice of the training set, because robust overfitting
can make the last epoch several points worse.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel

from training import bundle
from training.attacks import fgsm, pgd, predict
from training.data import ArrayDataset, augment, iterate_batches, load_splits, split_holdout, to_float
from training.distributed import Distributed, all_reduce_sum, barrier, init_from_env, shutdown
from training.methods import MethodConfig, get_method
from training.models import build_model
from training.schedules import lr_multiplier


@dataclass
class TrainConfig:
    method: str
    arch: str = "preact18"
    width: float = 1.0
    dataset: str = "cifar10"
    data_dir: str | None = None
    out: str = "runs/default"
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    schedule: str = "piecewise"
    seed: int = 0
    train_limit: int | None = None  # use only this many training images (CPU budgets, tests)
    holdout: int = 1000  # training images held out for choosing the best checkpoint
    holdout_eval: int = 500  # how many of them the per-epoch PGD check attacks
    # Catastrophic overfitting (single-step training: PGD accuracy collapses while FGSM accuracy rises) is
    # flagged when held-out PGD-10 accuracy falls co_drop below its best so far while held-out FGSM accuracy
    # exceeds it by co_gap; with stop_on_co the run ends there (the best checkpoint is already kept).
    co_drop: float = 0.1
    co_gap: float = 0.2
    stop_on_co: bool = False
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    resume: bool = False
    download: bool = False
    cache_dir: str | None = None
    command: str = ""
    method_config: MethodConfig = field(default_factory=MethodConfig)


def training_autocast(device_type: str, enabled: bool) -> torch.autocast:
    """The autocast every training step's method runs under: bfloat16 (the trainer enables it on CUDA with
    ``amp``).  Methods turn it off for what must stay fp32 (``MethodConfig.terms_precision``)."""
    return torch.autocast(device_type, torch.bfloat16, enabled=enabled)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.dist: Distributed = init_from_env(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.out = Path(cfg.out)
        self.method = get_method(cfg.method)
        # A standard model is chosen by clean accuracy, every robust one by PGD accuracy.
        self.selection_metric = "holdout_clean" if cfg.method == "standard" else "holdout_pgd10"

        splits = load_splits(cfg.dataset, cfg.data_dir, Path(cfg.cache_dir) if cfg.cache_dir else None, cfg.download)
        train, self.holdout = split_holdout(splits.train, cfg.holdout, cfg.seed)
        if cfg.train_limit:
            train = train.subset(slice(0, cfg.train_limit))
        self.train_set: ArrayDataset = train
        self.data_source = splits.source
        mean, std = splits.train.mean_std()
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone, as everything after does
        self.model = build_model(cfg.arch, len(train.classes), mean, std, cfg.width).to(self.device)
        if self.device.type == "cuda" and cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = DistributedDataParallel(self.model) if self.dist.enabled else self.model

        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.steps_per_epoch = len(train) // self.dist.world_size // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch size {cfg.batch_size} exceeds the {len(train)} training images")
        multiplier = lr_multiplier(cfg.schedule, cfg.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: multiplier(step / self.steps_per_epoch)
        )
        self.start_epoch, self.best_score, self.best_epoch, self.best_pgd = 0, -1.0, 0, -1.0
        if cfg.resume and (self.out / "last.pt").exists():
            self._load_checkpoint(self.out / "last.pt")

    # --- checkpoints -------------------------------------------------------------------------------------
    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_pgd": self.best_pgd,
            "config": asdict(self.cfg),
        }

    def _load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = state["epoch"] + 1
        self.best_score = state["best_score"]
        self.best_epoch = state.get("best_epoch", 0)
        self.best_pgd = state.get("best_pgd", -1.0)

    def metadata(self, metrics: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        _, channels, height, width = self.train_set.images.shape
        return {
            "arch": cfg.arch,
            "width": cfg.width,
            "num_classes": len(self.train_set.classes),
            "classes": self.train_set.classes,
            "input_size": [channels, height, width],
            "mean": self.model.mean.flatten().tolist(),
            "std": self.model.std.flatten().tolist(),
            "method": cfg.method,
            "hyperparameters": cfg.method_config.relevant(cfg.method),
            "eps": cfg.method_config.eps,
            "dataset": cfg.dataset,
            "data_source": self.data_source,
            "training": {
                "epochs": cfg.epochs,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "schedule": cfg.schedule,
                "weight_decay": cfg.weight_decay,
                "seed": cfg.seed,
                "train_images": len(self.train_set),
                "world_size": self.dist.world_size,
            },
            "metrics": metrics,
            "command": cfg.command,
        }

    # --- loop -------------------------------------------------------------------------------------------
    def _seed_epoch(self, epoch: int) -> torch.Generator:
        """Seeds for this epoch alone, so a resumed run repeats exactly what an uninterrupted one does."""
        torch.manual_seed(self.cfg.seed * 100_003 + epoch * 101 + self.dist.rank)
        return torch.Generator().manual_seed(self.cfg.seed * 7_919 + epoch)

    def train_epoch(self, epoch: int, progress: Progress | None) -> dict[str, float]:
        generator = self._seed_epoch(epoch)
        self.net.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
        parts: dict[str, float] = {}
        task = (
            progress.add_task(f"epoch {epoch + 1}/{self.cfg.epochs}", total=self.steps_per_epoch) if progress else None
        )
        batches = iterate_batches(
            self.train_set, self.cfg.batch_size, generator, rank=self.dist.rank, world_size=self.dist.world_size
        )
        autocast = training_autocast(self.device.type, self.cfg.amp and self.device.type == "cuda")
        for seen_steps, (images, labels) in enumerate(batches, start=1):
            x = augment(to_float(images, self.device), generator)
            y = labels.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                step = self.method(self.net, x, y, self.cfg.method_config)
            self.optimizer.zero_grad(set_to_none=True)
            step.loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            totals += torch.tensor([step.loss.item() * len(y), (step.logits.argmax(1) == y).sum().item(), len(y)])
            for key, value in step.parts.items():
                parts[key] = parts.get(key, 0.0) + value * len(y)
            if progress and not progress.console.is_terminal and seen_steps % max(1, self.steps_per_epoch // 10) == 0:
                # No live bar in a log file: leave a line every tenth of an epoch instead.
                progress.console.print(
                    f"  epoch {epoch + 1} step {seen_steps}/{self.steps_per_epoch} loss {totals[0] / totals[2]:.3f}"
                )
            if progress:
                progress.update(
                    task, advance=1, description=f"epoch {epoch + 1}/{self.cfg.epochs} loss {totals[0] / totals[2]:.3f}"
                )
        if progress:
            progress.remove_task(task)
        totals = all_reduce_sum(totals.to(self.device), self.dist).cpu()
        seen = totals[2].item()
        return {
            "train_loss": totals[0].item() / seen,
            "train_acc": totals[1].item() / seen,
            **{k: v / (seen / self.dist.world_size) for k, v in parts.items()},
        }

    def holdout_check(self) -> dict[str, float]:
        """Clean, FGSM and PGD-10 (eps of the method, step 2/255, uniform start) accuracy on the held-out
        training images.  FGSM beside PGD is what shows catastrophic overfitting: FGSM accuracy rising while
        PGD accuracy collapses."""
        self.model.eval()
        subset = self.holdout.subset(slice(0, self.cfg.holdout_eval))
        x, y = to_float(subset.images, self.device), subset.labels.to(self.device)
        eps = self.cfg.method_config.eps
        clean = (predict(self.model, x) == y).float().mean().item()
        chunks = range(0, len(y), 250)
        x_pgd = torch.cat([pgd(self.model, x[i : i + 250], y[i : i + 250], eps, 2 / 255, 10) for i in chunks])
        x_fgsm = torch.cat([fgsm(self.model, x[i : i + 250], y[i : i + 250], eps) for i in chunks])
        robust = (predict(self.model, x_pgd) == y).float().mean().item()
        fgsm_acc = (predict(self.model, x_fgsm) == y).float().mean().item()
        return {"holdout_clean": clean, "holdout_fgsm": fgsm_acc, "holdout_pgd10": robust}

    def catastrophic_overfitting(self, record: dict[str, Any]) -> bool:
        """Held-out PGD-10 accuracy co_drop below its best so far while FGSM accuracy exceeds it by co_gap."""
        if self.cfg.method == "standard" or self.best_pgd < 0:
            return False
        pgd10, fgsm_acc = record["holdout_pgd10"], record["holdout_fgsm"]
        return self.best_pgd - pgd10 >= self.cfg.co_drop and fgsm_acc - pgd10 >= self.cfg.co_gap

    def fit(self, stop_after_epoch: int | None = None) -> Path:
        """Train to the configured epoch count (or stop after ``stop_after_epoch``, as an interruption would)."""
        cfg = self.cfg
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, disable=not self.dist.is_main) as progress:
            for epoch in range(self.start_epoch, cfg.epochs):
                started = time.perf_counter()
                record = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
                record.update(self.train_epoch(epoch, progress if self.dist.is_main else None))
                if self.dist.is_main:  # every rank holds the same weights: one check is enough
                    torch.manual_seed(cfg.seed + 1)  # the check's random starts are the same every epoch
                    record.update(self.holdout_check())
                record["seconds"] = round(time.perf_counter() - started, 2)
                if self.dist.is_main:
                    self._end_of_epoch(epoch, record, progress)
                stop = self._broadcast_flag(bool(record.get("catastrophic_overfitting")) and cfg.stop_on_co)
                barrier(self.dist)
                if stop:
                    if self.dist.is_main:
                        progress.console.print(
                            f"[bold red]catastrophic overfitting at epoch {epoch + 1}: stopping (--stop-on-co); "
                            f"the best checkpoint is epoch {self.best_epoch}"
                        )
                    break
                if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                    break
        if self.dist.is_main and self.start_epoch < cfg.epochs:
            final = {k: v for k, v in record.items() if k.startswith("holdout") or k == "epoch"}
            final["best_epoch"] = self.best_epoch
            bundle.save(self.model, self.metadata({**final, "checkpoint": "last"}), self.out / "last")
            print(
                f"best checkpoint: epoch {self.best_epoch} ({self.selection_metric} {self.best_score:.3f}) "
                f"-> {self.out / 'best'}; last epoch {record['epoch']} -> {self.out / 'last'}"
            )
        shutdown(self.dist)
        return self.out / "best"

    def _broadcast_flag(self, flag: bool) -> bool:
        """The main rank's decision, on every rank (only the main rank runs the held-out check)."""
        if not self.dist.enabled:
            return flag
        value = torch.tensor([float(flag and self.dist.is_main)], device=self.device)
        return bool(all_reduce_sum(value, self.dist).item() > 0)

    def _end_of_epoch(self, epoch: int, record: dict[str, Any], progress: Progress) -> None:
        record["catastrophic_overfitting"] = self.catastrophic_overfitting(record)
        self.best_pgd = max(self.best_pgd, record["holdout_pgd10"])
        is_best = record[self.selection_metric] > self.best_score
        if is_best:
            self.best_score = record[self.selection_metric]
            self.best_epoch = record["epoch"]
        record["best_epoch"] = self.best_epoch
        with (self.out / "metrics.jsonl").open("a") as log:
            log.write(json.dumps(record) + "\n")
        if is_best:
            best = {k: v for k, v in record.items() if k.startswith("holdout") or k == "epoch"}
            bundle.save(self.model, self.metadata({**best, "checkpoint": "best"}), self.out / "best")
        _save_atomic(self._checkpoint(epoch), self.out / "last.pt")
        progress.console.print(
            f"epoch {record['epoch']}: loss {record['train_loss']:.3f} train acc {record['train_acc']:.3f} "
            f"holdout clean {record['holdout_clean']:.3f} fgsm {record['holdout_fgsm']:.3f} "
            f"pgd10 {record['holdout_pgd10']:.3f} ({record['seconds']:.0f}s); "
            f"best so far: epoch {self.best_epoch} ({self.selection_metric} {self.best_score:.3f})"
        )
        if record["catastrophic_overfitting"]:
            progress.console.print(
                f"[bold red]catastrophic overfitting suspected at epoch {record['epoch']}: held-out PGD-10 "
                f"{record['holdout_pgd10']:.3f} against its best {self.best_pgd:.3f}, "
                f"FGSM {record['holdout_fgsm']:.3f}; "
                f"best/ keeps epoch {self.best_epoch}"
            )
