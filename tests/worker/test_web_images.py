"""The web-image set: real pictures from Debian packages, split by source, files as a server would send them."""

from __future__ import annotations

import io
import json
from collections import defaultdict

import pytest
from PIL import Image

from worker.research import web_images


def test_every_split_holds_every_kind_and_no_source_crosses_splits(web_set):
    records = web_images.load_manifest(web_set)
    splits_of = defaultdict(set)
    for record in records:
        splits_of[record.source].add(record.split)
    assert all(len(splits) == 1 for splits in splits_of.values())
    for split in web_images.SPLITS:
        kinds = {r.kind for r in records if r.split == split}
        assert kinds == {"wallpaper", "astronomy", "stamp", "page", "pattern"}, split
    # The split is a property of the source name alone (stable across builds and machines).
    source = web_images.Source("x:y", "wallpaper", "p", "l", None)
    assert source.split == web_images.Source("x:y", "stamp", "q", "m", "/z").split


def test_files_are_what_the_manifest_says(web_set):
    for record in web_images.load_manifest(web_set):
        data = (web_set / record.file).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == record.format
            assert image.size == (record.width, record.height)
        assert 16 <= max(record.width, record.height) <= 1024
        assert record.licence and record.package and record.history
        if record.kind not in ("page", "pattern"):
            assert record.package in web_images.PACKAGES


def test_histories_include_camera_and_web_encodings():
    """Over many draws the delivery mixes JPEG, PNG and WebP, and photos get a camera-like first save."""
    import random

    rng = random.Random(0)
    photo = Image.new("RGB", (64, 48), (10, 120, 200))
    formats, camera = set(), 0
    for _ in range(200):
        data, fmt, history = web_images.deliver(photo, "wallpaper", rng)
        formats.add(fmt)
        camera += history[0].startswith("camera-jpeg")
        with Image.open(io.BytesIO(data)) as decoded:
            assert decoded.format == fmt
    assert formats == {"JPEG", "PNG", "WEBP"} and 80 < camera < 160


def test_rebuild_is_kept_and_a_missing_set_says_how_to_build_it(web_set, tmp_path):
    manifest = (web_set / "manifest.jsonl").read_text()
    assert web_images.build(web_set, limit=1, progress=False) == web_set  # finished build kept
    assert (web_set / "manifest.jsonl").read_text() == manifest
    with pytest.raises(web_images.MissingImagery, match="python -m worker.research.web_images build"):
        web_images.load_manifest(tmp_path)
    assert json.loads(json.dumps(web_images.summary(web_set)))["test"]["page"] == 2


def test_reserved_check_images_are_never_sources():
    """scikit-image's, matplotlib's and scikit-learn's sample images are the independent check set."""
    for source in web_images.packaged_sources():
        assert not any(name in (source.path or "") for name in ("skimage", "matplotlib", "sklearn"))


def test_sources_come_from_their_package_folder_with_its_kind():
    """A package is read only under its own folder (stellarium-data also ships maps and star-lore drawings), and
    packages sharing a folder (/usr/share/backgrounds) do not take each other's pictures."""
    sources = web_images.packaged_sources()
    for source in sources:
        kind, folder = web_images.PACKAGES[source.package]
        assert source.kind == kind and source.path.startswith(folder + "/"), source
    by_package = {p: sum(s.package == p for s in sources) for p in web_images.PACKAGES}
    assert all(count > 0 for count in by_package.values()), by_package
    # one source per picture: the two lomiri sets and ukui share /usr/share/backgrounds without sharing files
    assert len({s.path for s in sources}) == len(sources)


@pytest.mark.slow
def test_drawn_patterns_are_regular_and_repeatable():
    """A drawn pattern is the same picture for the same seed, and most of its energy away from the mean lies in
    a few spatial frequencies (a regular pattern, unlike a photo's spread-out spectrum)."""
    import numpy as np

    assert np.array_equal(np.asarray(web_images.render_pattern(7)), np.asarray(web_images.render_pattern(7)))
    assert not np.array_equal(np.asarray(web_images.render_pattern(7)), np.asarray(web_images.render_pattern(8)))
    concentrated = 0
    for seed in range(len(web_images.PATTERNS) * 2):
        image = web_images.render_pattern(seed)
        grey = np.asarray(image.convert("L").crop((0, 0, 512, 512)), dtype=np.float64)
        power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
        top = np.sort(power.ravel())[::-1]
        concentrated += top[:64].sum() > 0.5 * top.sum()  # 64 of 262,144 frequencies
    assert concentrated >= len(web_images.PATTERNS) * 2 - 2


def test_adding_sources_keeps_earlier_crops(monkeypatch):
    """The crops are seeded with CROP_SEED, not the build version: a version that only adds sources (drawn
    patterns) leaves the earlier sources' files byte for byte, so earlier measurements stay comparable."""
    source = web_images.rendered_sources(3)[2]
    fonts = web_images._fonts()
    before = [data for data, _record in web_images.images_of(source, fonts)]
    monkeypatch.setattr(web_images, "BUILD_VERSION", "web-images/99")
    assert [data for data, _record in web_images.images_of(source, fonts)] == before
    monkeypatch.setattr(web_images, "CROP_SEED", "another seed")
    assert [data for data, _record in web_images.images_of(source, fonts)] != before


def test_calibration_sources_get_more_crops_after_the_usual_ones(monkeypatch):
    """The calibration split's extra crops follow the usual ones, which stay byte for byte; other splits keep
    the usual count."""
    sources = web_images.rendered_sources(40)
    calibration = next(s for s in sources if s.split == "calibration")
    other = next(s for s in sources if s.split != "calibration")
    fonts = web_images._fonts()
    usual = web_images.CROPS_PER_SOURCE["page"]
    more = [data for data, _record in web_images.images_of(calibration, fonts)]
    assert len(more) == usual * web_images.CALIBRATION_CROP_FACTOR > usual
    assert len(list(web_images.images_of(other, fonts))) == usual
    monkeypatch.setattr(web_images, "CALIBRATION_CROP_FACTOR", 1)
    assert [data for data, _record in web_images.images_of(calibration, fonts)] == more[:usual]
