"""Data sets as in-memory uint8 tensors, decoded once and cached.

Every source (torchvision's CIFAR files, an ImageFolder tree or a tarball of one, Fashion-MNIST idx files)
becomes an ``ArrayDataset``: images (N, C, H, W) uint8 and labels (N,) int64.  Decoding JPEGs every epoch
would dominate a CPU run, so decoded arrays are cached on disk, keyed by the source file's identity.
Augmentation (random crop with padding, horizontal flip) runs on whole batches in torch.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "imagefolder")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(RuntimeError):
    """A data source is missing or malformed; the message says what to do."""


@dataclass
class ArrayDataset:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | slice) -> ArrayDataset:
        return ArrayDataset(self.images[index], self.labels[index], self.classes)

    def mean_std(self) -> tuple[list[float], list[float]]:
        pixels = self.images.float().div_(255).transpose(0, 1).flatten(1)
        return pixels.mean(1).tolist(), pixels.std(1).tolist()


@dataclass
class DataSplits:
    train: ArrayDataset
    test: ArrayDataset
    source: str  # what was read, for the bundle's record


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robust-scanner" / "datasets"


def load_splits(
    name: str, data_dir: str | Path | None, cache_dir: Path | None = None, download: bool = False
) -> DataSplits:
    """Load the train and test splits of data set ``name`` from ``data_dir``.

    ``data_dir`` may be an ImageFolder tree with ``train/`` and ``test/`` (or a .tar/.tar.gz of one) for any
    data set name; otherwise cifar10/cifar100 come from torchvision's files and fashion-mnist from idx files.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    path = Path(data_dir) if data_dir else None
    if path is not None and (_is_tarball(path) or (path / "train").is_dir()):
        return _cached(path, cache_dir, lambda: _read_imagefolder(path))
    if name == "imagefolder":
        raise DataError(f"--data-dir must be an ImageFolder tree with train/ and test/, or a tarball of one: {path}")
    if name == "fashion-mnist":
        return _read_fashion_mnist(path or FASHION_MNIST_DIR)
    return _read_torchvision_cifar(name, path, download)


def _is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz"))


def _cached(path: Path, cache_dir: Path | None, read) -> DataSplits:
    if not path.exists():
        raise DataError(f"data not found: {path}")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache_file = (cache_dir or default_cache_dir()) / f"{path.name}-{key}.pt"
    if cache_file.exists():
        saved = torch.load(cache_file, weights_only=True)
        return DataSplits(
            ArrayDataset(saved["train_images"], saved["train_labels"], saved["classes"]),
            ArrayDataset(saved["test_images"], saved["test_labels"], saved["classes"]),
            saved["source"],
        )
    splits = read()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")  # torchrun ranks may fill the cache at once
    torch.save(
        {
            "train_images": splits.train.images,
            "train_labels": splits.train.labels,
            "test_images": splits.test.images,
            "test_labels": splits.test.labels,
            "classes": splits.train.classes,
            "source": splits.source,
        },
        tmp,
    )
    tmp.replace(cache_file)  # atomic: an interrupted write never leaves a corrupt cache
    return splits


def _iter_imagefolder_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of every image, in the archive's stream order (random access into .gz is slow)."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                yield file.relative_to(path).as_posix(), file.read_bytes()
        return
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                yield member.name, tar.extractfile(member).read()


def _read_imagefolder(path: Path) -> DataSplits:
    found: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
    size = None
    for name, payload in _iter_imagefolder_files(path):
        parts = [p for p in name.split("/") if p not in ("", ".")]
        split_at = next((i for i, p in enumerate(parts) if p in found), None)
        if split_at is None or len(parts) - split_at != 3:
            continue  # not <split>/<class>/<file>
        split, label = parts[split_at], parts[split_at + 1]
        with Image.open(io.BytesIO(payload)) as im:
            im = im.convert("RGB")
            size = size or im.size
            if im.size != size:
                im = im.resize(size, Image.Resampling.BICUBIC)
            found[split].append((label, np.asarray(im)))
    if not found["train"] or not found["test"]:
        raise DataError(f"{path} holds no train/<class>/<image> and test/<class>/<image> files")
    classes = sorted({label for label, _ in found["train"]})
    index = {c: i for i, c in enumerate(classes)}

    def to_dataset(items: list[tuple[str, np.ndarray]]) -> ArrayDataset:
        images = torch.from_numpy(np.stack([a for _, a in items])).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor([index[c] for c, _ in items], dtype=torch.int64)
        return ArrayDataset(images, labels, classes)

    return DataSplits(to_dataset(found["train"]), to_dataset(found["test"]), f"imagefolder:{path.name}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _read_fashion_mnist(path: Path) -> DataSplits:
    def find(stem: str) -> Path:
        for candidate in (path / f"{stem}.gz", path / stem, path / "raw" / f"{stem}.gz", path / "raw" / stem):
            if candidate.exists():
                return candidate
        raise DataError(
            f"Fashion-MNIST file {stem} not found under {path}; install it with "
            "'apt-get install dataset-fashion-mnist' or pass --data-dir"
        )

    def split(prefix: str) -> ArrayDataset:
        images = torch.from_numpy(_read_idx(find(f"{prefix}-images-idx3-ubyte")).copy()).unsqueeze(1)
        labels = torch.from_numpy(_read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64))
        return ArrayDataset(images, labels, list(FASHION_MNIST_CLASSES))

    return DataSplits(split("train"), split("t10k"), f"fashion-mnist:{path}")


def _read_torchvision_cifar(name: str, path: Path | None, download: bool) -> DataSplits:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = path or Path("data")
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except RuntimeError as err:
        raise DataError(
            f"{name} not found under {root} ({err}); pass --download on a machine with internet, or --data-dir "
            "pointing at torchvision's files or an ImageFolder tree/tarball"
        ) from err

    def to_dataset(ds) -> ArrayDataset:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return ArrayDataset(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))

    return DataSplits(to_dataset(train), to_dataset(test), f"torchvision:{name}")


def split_holdout(dataset: ArrayDataset, n_holdout: int, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """A seeded held-out slice of the training set (for picking the best checkpoint, never the test set)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[n_holdout:]), dataset.subset(order[:n_holdout])


def seeded_subset(dataset: ArrayDataset, n: int | None, seed: int) -> ArrayDataset:
    """The same ``n`` images for every evaluation with this seed."""
    if n is None or n >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[:n].sort().values)


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded order of the positions of ``labels`` in which every prefix is as class-balanced as it can be.

    Each class's positions are shuffled, then the classes take turns (in a shuffled class order each round),
    so the first k positions hold floor(k / C) or one more of every class that still has images left.  A
    test split stored class by class makes "the first k of n" hold only a few classes; this order does not.
    """
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    queues = [(labels == c).nonzero().squeeze(1) for c in classes]
    queues = [q[torch.randperm(len(q), generator=generator)] for q in queues]
    order: list[torch.Tensor] = []
    for round_ in range(max((len(q) for q in queues), default=0)):
        turn = torch.randperm(len(queues), generator=generator).tolist()
        order.extend(queues[i][round_ : round_ + 1] for i in turn if round_ < len(queues[i]))
    return torch.cat(order) if order else torch.zeros(0, dtype=torch.long)


def stratified_prefix(labels: torch.Tensor, k: int | None, seed: int) -> torch.Tensor:
    """Sorted positions of a seeded, class-stratified choice of ``k`` of ``labels`` (all when k is None or too big)."""
    if k is None or k >= len(labels):
        return torch.arange(len(labels))
    return stratified_order(labels, seed)[:k].sort().values


def to_float(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip, on a float batch (B, C, H, W)."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    rows = (dy.view(-1, 1) + torch.arange(height)).to(images.device)  # (B, H)
    cols = (dx.view(-1, 1) + torch.arange(width)).to(images.device)  # (B, W)
    cols = torch.where(flip.to(images.device).view(-1, 1), cols.flip(1), cols)
    batch_index = torch.arange(batch, device=images.device).view(-1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch_index, rows.unsqueeze(2), cols.unsqueeze(1)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def iterate_batches(
    dataset: ArrayDataset,
    batch_size: int,
    generator: torch.Generator,
    *,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (uint8 images, labels); with ``world_size`` > 1 each rank reads its own shard."""
    order = torch.randperm(len(dataset), generator=generator) if shuffle else torch.arange(len(dataset))
    order = order[rank::world_size][: len(dataset) // world_size]  # equal shard sizes keep ranks in step
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield dataset.images[index], dataset.labels[index]
