"""Data loading, caching, augmentation and sharding (training/data.py) on tiny synthetic files."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.support.datasets import CLASSES, read_tree, write_imagefolder, write_tarball
from training.data import (
    FASHION_MNIST_CLASSES,
    ArrayDataset,
    DataError,
    augment,
    iterate_batches,
    load_splits,
    seeded_subset,
    split_holdout,
    to_float,
)


def expected_arrays(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, H, W) and labels of ``root/split``, class folders in sorted order, files sorted."""
    tree = read_tree(root, split)
    images, labels = [], []
    for label, name in enumerate(sorted(tree)):
        for array in tree[name]:
            images.append(torch.from_numpy(array).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def assert_same_dataset(a: ArrayDataset, b: ArrayDataset) -> None:
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert a.classes == b.classes


# --- ImageFolder --------------------------------------------------------------------------------------------


def test_imagefolder_tree_is_read_exactly(tiny_tree, tmp_path):
    splits = load_splits("imagefolder", tiny_tree, cache_dir=tmp_path)
    assert splits.train.classes == list(CLASSES)
    assert splits.train.images.shape == (64, 3, 8, 8) and splits.train.images.dtype == torch.uint8
    assert splits.test.images.shape == (16, 3, 8, 8)
    assert splits.train.labels.dtype == torch.int64
    for split, dataset in (("train", splits.train), ("test", splits.test)):
        images, labels = expected_arrays(tiny_tree, split)
        assert torch.equal(dataset.images, images)  # PNG is lossless
        assert torch.equal(dataset.labels, labels)
    assert splits.source == "imagefolder:tiny"
    # Bright images are class 0, dark ones class 1.
    train = splits.train
    assert train.images[train.labels == 0].float().mean() > train.images[train.labels == 1].float().mean() + 40


def test_tarball_gives_the_same_data_as_the_tree(tiny_tree, tiny_tarball, tmp_path):
    from_tree = load_splits("imagefolder", tiny_tree, cache_dir=tmp_path / "a")
    from_tar = load_splits("imagefolder", tiny_tarball, cache_dir=tmp_path / "b")
    assert_same_dataset(from_tree.train, from_tar.train)
    assert_same_dataset(from_tree.test, from_tar.test)


def test_any_dataset_name_accepts_an_imagefolder_tarball(tiny_tarball, tmp_path):
    # This is how the shared CIFAR-10 JPEG tarball (and a CIFAR-100 export) is read.
    for name in ("cifar10", "cifar100", "fashion-mnist"):
        splits = load_splits(name, tiny_tarball, cache_dir=tmp_path)
        assert len(splits.train) == 64 and splits.train.classes == list(CLASSES)


def test_tarball_with_a_top_folder_and_stray_files(tiny_tree, tmp_path):
    path = tmp_path / "nested.tgz"
    readme = tmp_path / "README.txt"
    readme.write_text("not an image")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tiny_tree / "train", arcname="export/train")
        tar.add(tiny_tree / "test", arcname="export/test")
        tar.add(readme, arcname="export/README.txt")
        tar.add(tiny_tree / "train" / "bright" / "0000.png", arcname="export/train/loose.png")  # not in a class
    splits = load_splits("imagefolder", path, cache_dir=tmp_path / "cache")
    images, labels = expected_arrays(tiny_tree, "train")
    assert torch.equal(splits.train.images, images)
    assert torch.equal(splits.train.labels, labels)


def test_jpeg_images_are_decoded(tmp_path):
    root = write_imagefolder(tmp_path / "jpeg", n_train=3, n_test=2, size=8, suffix=".jpg")
    splits = load_splits("imagefolder", write_tarball(root, tmp_path / "jpeg.tar"), cache_dir=tmp_path / "cache")
    images, labels = expected_arrays(root, "train")  # the same decoder, so the same pixels
    assert torch.equal(splits.train.images, images)
    assert torch.equal(splits.train.labels, labels)


def test_images_of_another_size_are_resized(tmp_path):
    root = write_imagefolder(tmp_path / "mixed", n_train=2, n_test=1, size=8)
    Image.new("RGB", (12, 10), (200, 10, 10)).save(root / "train" / "dark" / "9999.png")
    Image.new("L", (8, 8), 77).save(root / "test" / "dark" / "9999.png")  # grey becomes RGB
    splits = load_splits("imagefolder", root, cache_dir=tmp_path / "cache")
    assert splits.train.images.shape == (5, 3, 8, 8)
    assert splits.train.images[-1, 0].float().mean() > 150  # the red image, resized
    assert torch.equal(splits.test.images[-1], torch.full((3, 8, 8), 77, dtype=torch.uint8))


def test_cache_is_written_and_read_back(tiny_tarball, tmp_path):
    cache = tmp_path / "cache"
    first = load_splits("imagefolder", tiny_tarball, cache_dir=cache)
    files = list(cache.glob("tiny.tar.gz-*.pt"))
    assert len(files) == 1
    assert not list(cache.glob("*.tmp"))
    second = load_splits("imagefolder", tiny_tarball, cache_dir=cache)
    assert_same_dataset(first.train, second.train)
    assert_same_dataset(first.test, second.test)
    assert second.source == first.source

    # The second load really comes from the cache: an edit to the cached arrays shows up.
    saved = torch.load(files[0], weights_only=True)
    saved["train_labels"] = 1 - saved["train_labels"]
    torch.save(saved, files[0])
    third = load_splits("imagefolder", tiny_tarball, cache_dir=cache)
    assert torch.equal(third.train.labels, 1 - first.train.labels)


def test_cache_key_follows_the_source_file(tiny_tarball, tmp_path):
    cache = tmp_path / "cache"
    copy = tmp_path / "tiny.tar.gz"
    copy.write_bytes(tiny_tarball.read_bytes())
    load_splits("imagefolder", copy, cache_dir=cache)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed file gets a new cache entry
    load_splits("imagefolder", copy, cache_dir=cache)
    assert len(list(cache.glob("tiny.tar.gz-*.pt"))) == 2


def test_default_cache_dir_follows_xdg(tiny_tarball, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_splits("imagefolder", tiny_tarball)
    assert len(list((tmp_path / "xdg" / "robust-scanner" / "datasets").glob("tiny.tar.gz-*.pt"))) == 1


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="ImageFolder"):
        load_splits("imagefolder", tmp_path / "missing")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no train"):
        load_splits("imagefolder", empty, cache_dir=tmp_path / "cache")
    only_train = write_imagefolder(tmp_path / "only_train", n_train=1, n_test=0)
    with pytest.raises(DataError, match="holds no"):
        load_splits("imagefolder", only_train, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        load_splits("mnist", None)


# --- torchvision CIFAR --------------------------------------------------------------------------------------


def test_missing_cifar10_tarball_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_splits("cifar10", "/nonexistent.tar.gz", cache_dir=tmp_path)


def test_missing_cifar100_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"cifar100 not found under .*--download"):
        load_splits("cifar100", tmp_path / "nothing-here", cache_dir=tmp_path)


def test_synthetic_cifar100_stand_in_is_rejected_by_torchvision_checksums(tmp_path):
    # torchvision checks the md5 of train, test and meta, so a synthetic stand-in of cifar-100-python
    # cannot be read; it must fail with the same clear message, not a traceback.
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        entry = {
            "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
            "fine_labels": list(range(n)),
            "coarse_labels": [0] * n,
            "filenames": [f"{i}.png" for i in range(n)],
        }
        (folder / split).write_bytes(pickle.dumps(entry))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    with pytest.raises(DataError, match="--download"):
        load_splits("cifar100", tmp_path)


# --- Fashion-MNIST ------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    code = {1: 0x0801, 3: 0x0803}[array.ndim]
    payload = struct.pack(">I", code) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_fashion(folder: Path, compress: bool, seed: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 6, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if compress else "")), array, compress)
    return arrays


@pytest.mark.parametrize(("compress", "sub"), [(True, ""), (False, ""), (True, "raw")])
def test_fashion_mnist_idx_files(tmp_path, compress, sub):
    arrays = write_fashion(tmp_path / sub if sub else tmp_path, compress)
    splits = load_splits("fashion-mnist", tmp_path)
    assert splits.train.images.shape == (6, 1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(splits.train.labels, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(splits.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert splits.train.labels.dtype == torch.int64
    assert splits.train.classes == FASHION_MNIST_CLASSES and len(FASHION_MNIST_CLASSES) == 10


def test_fashion_mnist_missing_files(tmp_path):
    write_fashion(tmp_path, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte not found.*dataset-fashion-mnist"):
        load_splits("fashion-mnist", tmp_path)


# --- augmentation, batching, subsets -----------------------------------------------------------------------


def crops_of(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    padded = F.pad(image, (padding,) * 4)
    _, height, width = image.shape
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + height, dx : dx + width]
            out += [crop, crop.flip(2)]
    return out


def test_augment_keeps_the_shape_and_takes_values_from_the_padded_image():
    images = torch.rand(12, 3, 6, 5, generator=torch.Generator().manual_seed(0)) + 0.5  # no zeros but padding
    out = augment(images, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == images.shape and out.dtype == images.dtype
    for original, augmented in zip(images, out, strict=True):
        assert any(torch.equal(augmented, crop) for crop in crops_of(original, 2))


def test_augment_is_deterministic_for_a_seeded_generator():
    images = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(6)))


def test_augment_flips_and_shifts_some_images():
    images = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    flips = augment(images, torch.Generator().manual_seed(2), padding=0)
    flipped = [torch.equal(a, b.flip(2)) for a, b in zip(flips, images, strict=True)]
    kept = [torch.equal(a, b) for a, b in zip(flips, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54  # about half
    shifted = augment(images, torch.Generator().manual_seed(3), padding=2)
    assert (shifted == 0).any(dim=(1, 2, 3)).sum() > 32  # most crops reach into the zero padding


def tagged_dataset(n: int) -> ArrayDataset:
    """Labels are the indices, so every batch shows which images it holds."""
    return ArrayDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), ["x"])


def test_iterate_batches_shards_are_disjoint_and_equal():
    dataset = tagged_dataset(103)
    shards = []
    for rank in range(2):
        batches = list(iterate_batches(dataset, 10, torch.Generator().manual_seed(9), rank=rank, world_size=2))
        assert len(batches) == 5 and all(len(labels) == 10 for _, labels in batches)
        shards.append(torch.cat([labels for _, labels in batches]))
    assert len(shards[0]) == len(shards[1])
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_iterate_batches_covers_the_data_once_per_epoch():
    dataset = tagged_dataset(25)
    batches = list(iterate_batches(dataset, 4, torch.Generator().manual_seed(0), drop_last=False))
    seen = torch.cat([labels for _, labels in batches])
    assert sorted(seen.tolist()) == list(range(25))
    assert [len(labels) for _, labels in batches] == [4] * 6 + [1]
    assert seen.tolist() != list(range(25))  # shuffled
    dropped = list(iterate_batches(dataset, 4, torch.Generator().manual_seed(0)))
    assert len(dropped) == 6
    ordered = torch.cat([labels for _, labels in iterate_batches(dataset, 5, torch.Generator(), shuffle=False)])
    assert ordered.tolist() == list(range(25))
    images, labels = batches[0]
    assert images.shape == (4, 1, 2, 2) and torch.equal(labels, dataset.labels[labels])


def test_iterate_batches_is_reproducible():
    dataset = tagged_dataset(40)
    runs = [
        [labels.tolist() for _, labels in iterate_batches(dataset, 8, torch.Generator().manual_seed(3))]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_seeded_subset_is_reproducible():
    dataset = tagged_dataset(50)
    first = seeded_subset(dataset, 10, seed=1)
    assert torch.equal(first.labels, seeded_subset(dataset, 10, seed=1).labels)
    assert len(first) == 10 and len(set(first.labels.tolist())) == 10
    assert first.labels.tolist() == sorted(first.labels.tolist())
    assert not torch.equal(first.labels, seeded_subset(dataset, 10, seed=2).labels)
    assert seeded_subset(dataset, None, seed=1) is dataset
    assert seeded_subset(dataset, 50, seed=1) is dataset
    # A larger subset with the same seed extends a smaller one's draw order.
    assert set(seeded_subset(dataset, 5, seed=1).labels.tolist()) <= set(first.labels.tolist())


def test_split_holdout_is_disjoint_and_seeded():
    dataset = tagged_dataset(30)
    train, holdout = split_holdout(dataset, 7, seed=4)
    assert len(train) == 23 and len(holdout) == 7
    assert not set(train.labels.tolist()) & set(holdout.labels.tolist())
    assert sorted(train.labels.tolist() + holdout.labels.tolist()) == list(range(30))
    again_train, again_holdout = split_holdout(dataset, 7, seed=4)
    assert torch.equal(train.labels, again_train.labels) and torch.equal(holdout.labels, again_holdout.labels)
    assert not torch.equal(holdout.labels, split_holdout(dataset, 7, seed=5)[1].labels)


def test_mean_std_and_to_float():
    images = torch.tensor([[[[0, 255]], [[51, 51]]]], dtype=torch.uint8).repeat(2, 1, 1, 1)  # (2, 2, 1, 2)
    mean, std = ArrayDataset(images, torch.zeros(2, dtype=torch.int64), ["x"]).mean_std()
    assert mean == pytest.approx([0.5, 0.2])
    assert std[0] == pytest.approx(np.std([0, 1, 0, 1], ddof=1)) and std[1] == pytest.approx(0.0)
    as_float = to_float(images)
    assert as_float.dtype == torch.float32 and as_float.max() == 1.0 and as_float.min() == 0.0
    assert images.dtype == torch.uint8  # the source is untouched
