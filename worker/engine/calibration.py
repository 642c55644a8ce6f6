"""Thresholds for a stated false-positive rate, stored as a versioned artefact beside the model bundle.

A threshold is set on clean images that neither the combiner nor the models were fitted on: it is the
smallest value that at most ``target_fpr`` of those scores exceed (an image is flagged when its score is
strictly above it), so the rate measured on that set never exceeds the target.  With n clean images the
true rate is uncertain by about sqrt(target/n); the artefact stores a one-sided 95% Clopper-Pearson upper
bound next to the measured rate so nobody reads 1.0% off 500 images as a guarantee.

The artefact names the bundle versions it was fitted for; loading it for other bundles is an error, because
scores from other models live on another scale.  Its own ``version`` is a content hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from worker.engine.combiner import Combiner
from worker.engine.domain import DomainModel

FORMAT = "robust-scanner-calibration/1"
DEFAULT_FILE = "calibration.json"
DEFAULT_TARGET_FPR = 0.01


class CalibrationError(ValueError):
    """A calibration artefact is missing, malformed, tampered with, or belongs to other bundles."""


def default_path(robust_dir: str | Path) -> Path:
    """Where a bundle's calibration lives: inside the robust bundle's folder, next to its weights."""
    return Path(robust_dir) / DEFAULT_FILE


def with_untiled_offset(logit: torch.Tensor, tiled: torch.Tensor, offset: float) -> torch.Tensor:
    """``logit`` with ``offset`` added where the image had no native tiles (``Calibration.combined``)."""
    return logit + offset * (~tiled.to(logit.device)).to(logit.dtype)


def threshold_for_fpr(clean_scores: torch.Tensor | np.ndarray, target_fpr: float) -> float:
    """The smallest t with mean(clean > t) <= target_fpr (flag when score > t)."""
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target FPR must be in [0, 1), got {target_fpr}")
    values = np.sort(np.asarray(clean_scores, dtype=np.float64).reshape(-1))[::-1]
    if len(values) == 0:
        raise ValueError("no clean scores to set a threshold on")
    allowed = math.floor(target_fpr * len(values) + 1e-9)  # clean images that may lie above the threshold
    return float(values[min(allowed, len(values) - 1)])


def operating_threshold(
    clean_scores: torch.Tensor | np.ndarray,
    benign_groups: Mapping[str, torch.Tensor | np.ndarray] | None,
    target_fpr: float,
) -> float:
    """The threshold that keeps clean images AND each group of benignly changed images (re-compressed,
    resized, noisy...) at or below ``target_fpr``: ordinary images on the web come in all those forms, and a
    threshold set on pristine images alone would flag the noisy ones far more often than stated."""
    groups = [g for g in (benign_groups or {}).values() if len(np.asarray(g).reshape(-1))]
    return max([threshold_for_fpr(clean_scores, target_fpr)] + [threshold_for_fpr(g, target_fpr) for g in groups])


def flag_rate(scores: torch.Tensor | np.ndarray, threshold: float) -> float:
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    return float((values > threshold).mean()) if len(values) else float("nan")


def fpr_upper_bound(false_positives: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper confidence bound on a rate observed as false_positives / n."""
    if false_positives >= n:
        return 1.0
    return float(stats.beta.ppf(confidence, false_positives + 1, n - false_positives))


def roc_auc(negatives: torch.Tensor | np.ndarray, positives: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half): P(score_pos > score_neg)."""
    neg = np.asarray(negatives, dtype=np.float64).reshape(-1)
    pos = np.asarray(positives, dtype=np.float64).reshape(-1)
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    ranks = stats.rankdata(np.concatenate([neg, pos]))
    u = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(neg) * len(pos)))


@dataclass(frozen=True)
class Calibration:
    detectors: tuple[str, ...]
    detector_set: str
    combiner: Combiner
    threshold: float
    detector_thresholds: dict[str, float]
    target_fpr: float
    measured_fpr: float
    fpr_upper_95: float
    n_threshold: int
    bundles: dict[str, str]  # {"robust": version, "standard": version}
    data: dict[str, Any] = field(default_factory=dict)  # what it was fitted on
    evaluation: dict[str, Any] = field(default_factory=dict)  # held-out measurements
    domain: DomainModel | None = None  # "no confident class" below its threshold (None: labels always shown)
    # Added to the combined score of images without native tiles (see ``combined``); 0 in older artefacts.
    untiled_offset: float = 0.0
    created: str = ""
    version: str = ""

    def combined(self, scores: Mapping[str, torch.Tensor], tiled: torch.Tensor) -> torch.Tensor:
        """The combined score per image: the combiner's logit, plus ``untiled_offset`` for images too small for
        native tiles.  The detector reads those through the 32 px model input alone, where its scores run on
        another scale than over tiles of a photo; the offset is the difference of the two populations'
        thresholds, so that the one ``threshold`` holds each at the target rate."""
        return with_untiled_offset(self.combiner.logit(scores), tiled, self.untiled_offset)

    def content(self) -> dict[str, Any]:
        """Everything the version hash covers (all but ``version`` and ``created``)."""
        return {
            "format": FORMAT,
            "detectors": list(self.detectors),
            "detector_set": self.detector_set,
            "combiner": self.combiner.to_dict(),
            "threshold": self.threshold,
            "detector_thresholds": dict(self.detector_thresholds),
            "target_fpr": self.target_fpr,
            "measured_fpr": self.measured_fpr,
            "fpr_upper_95": self.fpr_upper_95,
            "n_threshold": self.n_threshold,
            "bundles": dict(self.bundles),
            "data": self.data,
            "evaluation": self.evaluation,
            **({"domain": self.domain.to_dict()} if self.domain is not None else {}),
            **({"untiled_offset": self.untiled_offset} if self.untiled_offset else {}),
        }

    def content_hash(self) -> str:
        text = json.dumps(self.content(), sort_keys=True, separators=(",", ":"), allow_nan=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_bundles(self, robust_version: str, standard_version: str, detector_version: str | None = None) -> None:
        """The loaded bundles must be the ones this was fitted for (the perturbation detector too, if any)."""
        wanted = {"robust": robust_version, "standard": standard_version}
        if detector_version is not None:
            wanted["detector"] = detector_version
        if self.bundles != wanted:
            raise CalibrationError(
                f"calibration {self.version} was fitted for bundles {self.bundles}, not for the loaded {wanted}; "
                "run `python -m worker.research.calibrate` for these bundles"
            )


def build(
    detectors: Sequence[str],
    detector_set: str,
    combiner: Combiner,
    combined_clean: torch.Tensor,
    detector_clean: Mapping[str, torch.Tensor],
    target_fpr: float,
    bundles: Mapping[str, str],
    data: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
    created: str = "",
    combined_benign: Mapping[str, torch.Tensor] | None = None,
    domain: DomainModel | None = None,
    untiled_offset: float = 0.0,
) -> Calibration:
    """Set the combined threshold (see ``operating_threshold``) and per-detector ones on held-out scores
    and version the result.  The combined scores are ``Calibration.combined``'s, ``untiled_offset`` included."""
    threshold = operating_threshold(combined_clean, combined_benign, target_fpr)
    n = len(combined_clean)
    false_positives = int(round(flag_rate(combined_clean, threshold) * n))
    calibration = Calibration(
        detectors=tuple(detectors),
        detector_set=detector_set,
        combiner=combiner,
        threshold=threshold,
        detector_thresholds={k: threshold_for_fpr(v, target_fpr) for k, v in detector_clean.items()},
        target_fpr=target_fpr,
        measured_fpr=false_positives / n,
        fpr_upper_95=fpr_upper_bound(false_positives, n),
        n_threshold=n,
        bundles=dict(bundles),
        data=dict(data),
        evaluation=dict(evaluation or {}),
        domain=domain,
        untiled_offset=untiled_offset,
        created=created,
    )
    return _with_version(calibration)


def _with_version(calibration: Calibration) -> Calibration:
    return replace(calibration, version=calibration.content_hash())


def save(calibration: Calibration, path: str | Path) -> Path:
    """Write the artefact atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**calibration.content(), "created": calibration.created, "version": calibration.version}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load(path: str | Path, robust_version: str | None = None, standard_version: str | None = None) -> Calibration:
    """Read and verify an artefact; with bundle versions given, reject one fitted for other bundles."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CalibrationError(f"no calibration at {path}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CalibrationError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CalibrationError(f"{path}: unsupported calibration format (expected {FORMAT})")
    try:
        calibration = Calibration(
            detectors=tuple(document["detectors"]),
            detector_set=document["detector_set"],
            combiner=Combiner.from_dict(document["combiner"]),
            threshold=float(document["threshold"]),
            detector_thresholds={k: float(v) for k, v in document["detector_thresholds"].items()},
            target_fpr=float(document["target_fpr"]),
            measured_fpr=float(document["measured_fpr"]),
            fpr_upper_95=float(document["fpr_upper_95"]),
            n_threshold=int(document["n_threshold"]),
            bundles=dict(document["bundles"]),
            data=dict(document.get("data", {})),
            evaluation=dict(document.get("evaluation", {})),
            domain=DomainModel.from_dict(document["domain"]) if "domain" in document else None,
            untiled_offset=float(document.get("untiled_offset", 0.0)),
            created=str(document.get("created", "")),
            version=str(document.get("version", "")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CalibrationError(f"{path}: malformed calibration ({err})") from err
    if calibration.version != calibration.content_hash():
        raise CalibrationError(f"{path}: content hash does not match version {calibration.version!r}; edited?")
    if list(calibration.combiner.features) != list(calibration.detectors):
        raise CalibrationError(f"{path}: combiner features differ from the detector list")
    if robust_version is not None and standard_version is not None:
        calibration.check_bundles(robust_version, standard_version)
    return calibration
