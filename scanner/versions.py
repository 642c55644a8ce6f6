"""Which model pair and calibration a deployment serves, read from the bundle folders' JSON alone, so that the
API knows the versions its verdicts must carry without importing the model code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scanner.settings import Settings
from worker.versions import pair_version

UNCALIBRATED = "uncalibrated"


@dataclass(frozen=True)
class ServedVersions:
    model_version: str  # worker.versions.pair_version of the two bundles, as the engine reports it
    calibration_version: str


def _version(path: Path) -> str:
    try:
        return str(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError) as err:
        raise RuntimeError(f"cannot read the version from {path}: {err}") from err


def served_versions(settings: Settings) -> ServedVersions:
    robust = _version(settings.robust_bundle / "bundle.json")
    standard = _version(settings.standard_bundle / "bundle.json")
    calibration = settings.calibration or settings.robust_bundle / "calibration.json"
    if settings.calibration is None and not calibration.is_file():
        return ServedVersions(pair_version(robust, standard), UNCALIBRATED)
    return ServedVersions(pair_version(robust, standard), _version(calibration))
