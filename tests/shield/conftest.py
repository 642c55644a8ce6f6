"""Real photos for the shield's tests, and a Redis server of their own."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from scanner.shield.fingerprint import fingerprint
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


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `apt-get install redis-server` (scripts/test.sh does it)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not accept connections within 10 s")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(_free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty database of the test Redis."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    client.flushdb()
    client.close()
