"""Real photos for the shield's tests, and an empty database of the suite's Redis (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from scanner.shield.fingerprint import fingerprint
from tests.support.services import RedisServer
from worker.engine.imaging import to_rgb
from worker.research import web_images

PHOTO_PACKAGES = ("mate-backgrounds", "ukui-wallpapers", "lomiri-wallpapers-16.04")


def to_long_side(image: Image.Image, side: int) -> Image.Image:
    factor = side / max(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return load_photos()


def load_photos() -> list[np.ndarray]:
    """Distinct photos and artwork of the wallpaper packages (as ``worker.research.web_images`` reads them), at
    512 px on the long side, those with a fingerprint only (a flat picture has none).  The packages are
    installed when missing, as the web-image set's build does."""
    web_images.install_packages([p for p in PHOTO_PACKAGES if p in web_images.missing_packages()])
    largest: dict[str, tuple[int, str]] = {}
    for package in PHOTO_PACKAGES:
        for path in web_images._package_files(package):
            name = web_images._source_name(package, path)
            size = path.stat().st_size
            if name not in largest or size > largest[name][0]:
                largest[name] = (size, str(path))
    out = []
    for _, path in sorted(largest.values(), key=lambda item: item[1]):
        with Image.open(path) as image:
            picture = np.asarray(to_long_side(to_rgb(image), 512))
        if fingerprint(picture).size:
            out.append(picture)
    assert len(out) >= 30, f"only {len(out)} photos with a fingerprint in {PHOTO_PACKAGES}"
    return out


@pytest.fixture(scope="session")
def small_photos(photos: list[np.ndarray]) -> list[np.ndarray]:
    return shrink(photos)


def shrink(photos: list[np.ndarray]) -> list[np.ndarray]:
    """The photos at the model's input size (32 px, CIFAR-10's): an attack's noise is not averaged away."""
    small = [np.asarray(Image.fromarray(p).resize((32, 32), Image.Resampling.BOX)) for p in photos]
    return [s for s in small if fingerprint(s).size]


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty database of the test Redis."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    client.flushdb()
    client.close()
