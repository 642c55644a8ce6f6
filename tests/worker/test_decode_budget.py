"""Memory per scan: the engine keeps a few KB per image of a batch, not its decoded pixels, and the threads of
a process decode within one pixel budget.  Eight 24 Mpx images in one scan used to hold 2.3 GB."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scanner.settings import Settings
from worker.engine import budget, load_engine
from worker.engine.budget import PixelBudget

REPO = Path(__file__).resolve().parents[2]
LARGE = (6000, 4000)  # 24 Mpx: the cap of the formats without a draft mode; a JPEG this size decodes in full

# In a fresh process: the peak RSS after one large image, then after a batch of them (ru_maxrss only grows).
MEASURE = """
import json, resource, sys
from pathlib import Path
from scanner.settings import Settings
from worker.engine import budget, load_engine
settings = Settings()
engine = load_engine(str(settings.robust_bundle), str(settings.standard_bundle), threads=1)
files = [Path(p).read_bytes() for p in sys.argv[1:]]
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
engine.analyse(files[:1])
one = peak()
verdicts = engine.analyse(files)
print(json.dumps({"one": one, "all": peak(), "held": budget.DECODE_BUDGET.peak,
                  "verdicts": sum(hasattr(v, "combined") for v in verdicts)}))
"""


def photo_jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A photo-like JPEG (gradients and scattered noise) of ``size``."""
    width, height = size
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = (np.arange(width) * 255 // width)[None, :]
    pixels[..., 1] = (np.arange(height) * 255 // height)[:, None]
    pixels[..., 2] = seed * 40 % 256
    noise = pixels[::7, ::5]
    noise[:] = np.random.default_rng(seed).integers(0, 256, noise.shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow
def test_a_batch_of_large_images_costs_the_memory_of_one(tmp_path: Path) -> None:
    paths = []
    for seed in range(5):
        path = tmp_path / f"large{seed}.jpg"
        path.write_bytes(photo_jpeg(LARGE, seed))
        paths.append(str(path))
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *paths], capture_output=True, text=True, timeout=600, cwd=REPO, check=True
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    decoded = LARGE[0] * LARGE[1] * 4  # bytes: Pillow keeps RGB at 4 bytes a pixel
    assert measured["verdicts"] == 5
    # The batch's peak is the single image's: four more images would add 4 x 96 MB if their pixels were kept.
    assert measured["all"] - measured["one"] < decoded / 2, measured
    assert measured["held"] == LARGE[0] * LARGE[1]  # each was counted, at its full size (no draft below 4096 px)


@pytest.fixture(scope="module")
def engine():  # noqa: ANN201 - worker.engine.Engine
    settings = Settings()
    return load_engine(str(settings.robust_bundle), str(settings.standard_bundle), threads=1)


def test_threads_decoding_at_once_stay_within_the_pixel_budget(engine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Four threads, each a scan of two 2 Mpx JPEGs, under a budget of three such images: never more than
    three are decoded at once, and the verdicts are those of one thread alone."""
    size = (1600, 1250)
    images = [photo_jpeg(size, seed) for seed in range(8)]
    alone = [v.combined for v in engine.analyse(images)]
    small = PixelBudget(3 * size[0] * size[1])
    monkeypatch.setattr(budget, "DECODE_BUDGET", small)
    results: dict[int, list] = {}
    start = threading.Barrier(4)

    def scan(index: int) -> None:
        start.wait()
        results[index] = [v.combined for v in engine.analyse(images[2 * index : 2 * index + 2])]

    threads = [threading.Thread(target=scan, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert [score for index in range(4) for score in results[index]] == alone
    assert size[0] * size[1] <= small.peak <= small.capacity
    assert small.held == 0


def test_an_image_larger_than_the_budget_waits_then_runs_alone() -> None:
    small = PixelBudget(100)
    inside, leave = threading.Event(), threading.Event()

    def large() -> None:
        with small.hold(500):
            inside.set()
            leave.wait(30)

    waiter = threading.Thread(target=large)
    with small.hold(60):
        waiter.start()
        wait_until(lambda: small.waiting == 1)  # queued behind the 60 held: it cannot have started
        assert not inside.is_set()
    assert inside.wait(30)
    assert small.held == small.capacity and small.peak == 500  # alone, and its true size is the peak
    leave.set()
    waiter.join(30)
    assert small.held == 0 and small.waiting == 0


def wait_until(condition, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
