"""Builders of tiny synthetic data sets: ImageFolder trees of 8x8 pictures whose brightness tells the class."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("bright", "dark")


def class_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image whose brightness tells its class (0: bright, 1: dark), with noise."""
    base = 170 if label == 0 else 85
    return np.clip(base + rng.integers(-60, 61, size=(size, size, 3)), 0, 255).astype(np.uint8)


def write_imagefolder(
    root: Path, n_train: int, n_test: int, size: int = 8, suffix: str = ".png", seed: int = 0
) -> Path:
    """``root/{train,test}/{bright,dark}/NNNN<suffix>``: n_train and n_test images per class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(class_image(label, size, rng)).save(folder / f"{i:04d}{suffix}")
    return root


def write_tarball(tree: Path, path: Path) -> Path:
    """Pack ``tree``'s train/ and test/ folders into a .tar.gz with the same layout as the shared data."""
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    return path


def read_tree(root: Path, split: str) -> dict[str, list[np.ndarray]]:
    """Class name -> the decoded RGB arrays of ``root/split/<class>/*``, in sorted file order."""
    return {
        folder.name: [np.array(Image.open(f).convert("RGB")) for f in sorted(folder.iterdir())]
        for folder in sorted((root / split).iterdir())
    }
