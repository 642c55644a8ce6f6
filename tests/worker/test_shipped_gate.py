"""The shipped domain gate on known inliers and outliers, through the engine as the service runs it: CIFAR-10
test images keep their label (also shown larger); rendered pages, drawn patterns and wallpaper crops get none."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from training.data import load_splits, stratified_prefix
from worker.engine.engine import Engine
from worker.research import web_images
from worker.research.gate_data import arrays_to_images, seeded, shown_larger
from worker.research.pools import decode_web_images

REPO_ROOT = Path(__file__).resolve().parents[2]
ROBUST, STANDARD = REPO_ROOT / "models" / "pgd-at-preact18-w0.25", REPO_ROOT / "models" / "standard-preact18-w0.25"
DATA_NAME = "cifar10-jpeg.tar.gz"


def cifar_data() -> Path:
    """The shared CIFAR-10 copy, ``../shared/data`` from the project root (or from the folder of worktrees)."""
    for base in (REPO_ROOT.parent, REPO_ROOT.parent.parent):
        if (base / "shared" / "data" / DATA_NAME).is_file():
            return base / "shared" / "data" / DATA_NAME
    pytest.fail(f"the CIFAR-10 test data is missing: ../shared/data/{DATA_NAME} (see ../shared/data/README.md)")


@pytest.fixture(scope="module")
def engine() -> Engine:
    served = Engine.from_bundles(ROBUST, STANDARD, threads=1)
    assert served.gate is not None, f"no domain gate in {ROBUST}/domain-gate"
    return served


@pytest.fixture(scope="module")
def cifar_test() -> list[tuple[Image.Image, int]]:
    """100 CIFAR-10 test images, ten of each class, with their labels."""
    test = load_splits("cifar10", cifar_data()).test
    chosen = stratified_prefix(test.labels, 100, seed=0)
    return list(zip(arrays_to_images(test.images[chosen]), test.labels[chosen].tolist(), strict=True))


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def kept_share(verdicts: list) -> float:
    return sum(v.label is not None for v in verdicts) / len(verdicts)


def test_cifar10_images_keep_their_label_as_stored_and_shown_larger(engine, cifar_test):
    verdicts = engine.analyse([encoded(image) for image, _ in cifar_test])
    assert kept_share(verdicts) >= 0.85  # 95% of the whole test set (results/domain_gate.json)
    for verdict in verdicts:
        assert (verdict.label is None) == (verdict.in_domain < engine.gate.threshold)
        if verdict.label is not None:
            assert verdict.label == engine.classes[verdict.label_index]
    correct = sum(v.label == engine.classes[y] for v, (_, y) in zip(verdicts, cifar_test, strict=True))
    assert correct >= 50  # the robust model's own accuracy (67% clean) on the kept ones
    larger = [encoded(shown_larger(image, seeded("shown", i)), "JPEG", quality=90) for i, (image, _) in
              enumerate(cifar_test)]  # fmt: skip
    assert kept_share(engine.analyse(larger)) >= 0.7


def test_rendered_pages_and_drawn_patterns_get_no_class(engine):
    fonts = web_images._fonts()
    pages = [web_images.render_page(seed, fonts) for seed in range(6)]
    patterns = [web_images.render_pattern(seed) for seed in range(7)]  # one of each kind of pattern
    for verdict in engine.analyse([encoded(image) for image in pages + patterns]):
        assert verdict.label is None and verdict.in_domain < engine.gate.threshold
        assert verdict.top_k  # the model's guess is still there, for whoever wants it


def test_wallpaper_crops_get_no_class(engine, web_set):
    """The wallpaper crops of the small web-image set's test and calibration splits (the gate trained on
    neither), as served."""
    records = [r for r in web_images.load_manifest(web_set) if r.kind == "wallpaper" and r.split != "train"]
    assert records
    for verdict in engine.analyse(decode_web_images(web_set, records, engine.limits)):
        assert verdict.label is None
