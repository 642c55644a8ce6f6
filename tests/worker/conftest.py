"""Tiny real bundles (PreActResNet-18 at width 1/16, 8x8 inputs, the two classes of the tiny data set) and an
engine over them, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.models import make_bundle, make_detector_bundle
from worker.engine.engine import Engine


@pytest.fixture(scope="session")
def bundle_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny robust bundle (with a tiny perturbation detector in its perturbation-detector/ folder, where
    the engine looks for it) and the tiny standard one."""
    root = tmp_path_factory.mktemp("bundles")
    robust = make_bundle(root / "robust", 1, "otjr")
    make_detector_bundle(robust / "perturbation-detector")
    return robust, make_bundle(root / "standard", 2, "standard")


@pytest.fixture(scope="session")
def engine(bundle_dirs) -> Engine:
    """An uncalibrated engine over the tiny bundles (one thread, as the whole suite runs)."""
    robust, standard = bundle_dirs
    return Engine.from_bundles(robust, standard, calibration_path=None, threads=1, max_batch=4)
