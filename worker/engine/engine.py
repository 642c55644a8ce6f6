"""The engine: image bytes in, verdicts out.

One ``Engine`` holds the robust bundle (the model whose label we report), its standard companion (the
reference the detectors compare against), the perturbation detector (a small CNN bundle kept in the robust
bundle's ``perturbation-detector/`` folder, trained for this pair by ``worker.research.train_detector``) and the
detector calibration.  It is built once per process
(``load_engine`` memoises it; a Celery worker builds it in ``worker_process_init``, since CUDA cannot be
re-initialised in a forked child) and then fed batches of at most ``max_batch`` images.

Per image the verdict carries the robust label, confidence and top-k; every detector's score; the combined
score and whether it exceeds the calibrated threshold; the versions of both bundles and of the calibration;
and timings.  ``decode`` is measured per image (bytes to the model's input); ``inference`` (the robust
forward) and ``detection`` (the extra views, detector scores and combiner) are measured per batch and
divided evenly among its images.  Without a calibration the engine still reports labels and raw detector
scores, but ``combined`` and ``flagged`` are None: it never guesses a threshold.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.bundle import Bundle
from training.bundle import load as load_bundle
from worker.engine import calibration as calib
from worker.engine import detectors as det
from worker.engine import domain_gate, native
from worker.engine.images import ImageError, ImageLimits, decoding, holding, to_model_input
from worker.engine.serving import for_serving
from worker.versions import pair_version

log = logging.getLogger(__name__)
DETECTOR_FOLDER = "perturbation-detector"
NATIVE_DRAFT_SIZE = 2048


class EngineError(RuntimeError):
    """The bundles or the calibration cannot serve together (mismatched classes, input size, versions)."""


@dataclass(frozen=True)
class Verdict:
    label: str | None  # None: no confident class (the image is not one of the robust model's classes)
    label_index: int  # the top class, also when it is not confident
    confidence: float
    in_domain: float | None  # 0-1, how sure the model is that the image shows one of its classes
    top_k: list[tuple[str, float]]
    scores: dict[str, float]
    combined: float | None
    flagged: bool | None
    threshold: float | None
    model_version: str  # "<robust version>+<standard version>"
    robust_version: str
    standard_version: str
    calibration_version: str | None
    timings_ms: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top_k"] = [list(pair) for pair in self.top_k]
        return data


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Engine:
    def __init__(
        self,
        robust: Bundle,
        standard: Bundle,
        calibration: calib.Calibration | None = None,
        *,
        device: str | torch.device = "auto",
        max_batch: int = 64,
        threads: int | None = None,
        limits: ImageLimits | None = None,
        top_k: int = 5,
        detectors: Sequence[str] | None = None,
        detector: Bundle | None = None,
        gate: domain_gate.DomainGate | None = None,
    ) -> None:
        """``threads``: torch CPU threads for this process (default: the cores this process may use);
        ``detector``: the perturbation detector bundle (needed by the ``perturbation_net`` detector);
        ``gate``: the domain gate trained on the robust bundle's features (without one, the calibration's
        domain model, if any, says which labels are confident)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        torch.set_num_threads(threads or available_cores())
        self.device = pick_device(device) if isinstance(device, str) else device
        _check_compatible(robust, standard)
        if detector is not None:
            _check_detector(robust, detector)
        if gate is not None:
            _check_gate(gate, robust, standard)
        self.gate = gate
        if calibration is not None:
            calibration.check_bundles(robust.version, standard.version, detector.version if detector else None)
            if calibration.detector_set != det.DETECTOR_SET:
                raise EngineError(
                    f"calibration {calibration.version} used {calibration.detector_set}, this code has "
                    f"{det.DETECTOR_SET}; recalibrate"
                )
            if detectors is not None and tuple(detectors) != calibration.detectors:
                raise EngineError("detectors differ from the ones the calibration was fitted with")
            detectors = calibration.detectors
        self.robust, self.standard, self.detector, self.calibration = robust, standard, detector, calibration
        models = {det.ROBUST: robust.model, det.STANDARD: standard.model}
        if detector is not None:
            models[det.DETECTOR] = detector.model
        for model in models.values():
            model.to(self.device).eval()
        # What the engine computes with: the same functions, folded and laid out for speed (``serving``).
        self.serving = {name: for_serving(model, self.device) for name, model in models.items()}
        self.max_batch = max_batch
        self.limits = limits or ImageLimits()
        self.input_size = list(robust.metadata["input_size"])
        self.classes = list(robust.classes)
        self.top_k = min(top_k, len(self.classes))
        if detectors is None:  # uncalibrated: the default detectors these bundles can compute
            detectors = [d.name for d in det.resolve(det.DEFAULT_DETECTORS) if d.computable_with(models)]
        self.detectors = det.resolve(detectors)
        missing = [d.name for d in self.detectors if not d.computable_with(models)]
        if missing:
            raise EngineError(
                f"detector(s) {', '.join(missing)} need the perturbation detector bundle; train one with "
                "`python -m worker.research.train_detector`"
                " (it is looked for in the robust bundle's perturbation-detector/)"
            )
        compared = {name: model for name, model in self.serving.items() if name != det.DETECTOR}
        self.views = det.ViewComputer(compared, self.input_size, self.device)
        # The perturbation detector reads pixels as served: JPEG's decoder may only downscale images whose
        # sides both stay at least this large (a 24 Mpx photo), which keeps decoding bounded.
        self.draft_size = NATIVE_DRAFT_SIZE

    @classmethod
    def from_bundles(
        cls,
        robust_dir: str | Path,
        standard_dir: str | Path,
        calibration_path: str | Path | None = None,
        device: str = "auto",
        max_batch: int = 64,
        threads: int | None = None,
        detector_dir: str | Path | None = None,
        gate_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> Engine:
        """Load the bundles and the calibration (default: ``calibration.json`` in the robust bundle's folder;
        an explicit path must exist, the default may be absent and then the engine runs uncalibrated).
        The perturbation detector is ``detector_dir`` or, by default, the robust bundle's
        ``perturbation-detector/`` folder when it exists; the domain gate likewise ``gate_dir`` or its
        ``domain-gate/`` folder."""
        robust, standard = load_bundle(robust_dir), load_bundle(standard_dir)
        detector = find_detector(robust_dir, detector_dir)
        gate = domain_gate.find(robust_dir, gate_dir)
        calibration = None
        if calibration_path is not None:
            calibration = calib.load(calibration_path)  # checked against the bundles in __init__
        elif calib.default_path(robust_dir).is_file():
            calibration = calib.load(calib.default_path(robust_dir))
        else:
            log.warning("no calibration for %s: verdicts will carry scores but no flag", robust_dir)
        return cls(
            robust, standard, calibration, device=device, max_batch=max_batch, threads=threads, detector=detector,
            gate=gate, **kwargs,
        )  # fmt: skip

    @property
    def bundle_versions(self) -> dict[str, str]:
        """The versions of the bundles served (what a calibration for this engine is fitted for)."""
        versions = {"robust": self.robust.version, "standard": self.standard.version}
        if self.detector is not None:
            versions["detector"] = self.detector.version
        return versions

    @property
    def model_version(self) -> str:
        return pair_version(self.robust.version, self.standard.version)

    # --- public ------------------------------------------------------------------------------------------
    def analyse(self, items: Sequence[bytes | Image.Image]) -> list[Verdict | ImageError]:
        """One result per item, in order: a ``Verdict``, or the ``ImageError`` that explains the rejection."""
        results: list[Verdict | ImageError] = []
        for start in range(0, len(items), self.max_batch):
            results.extend(self._analyse_chunk(items[start : start + self.max_batch]))
        return results

    def analyse_tensor(self, x: torch.Tensor) -> list[Verdict]:
        """Verdicts for a batch already in model space: float (B, C, H, W) in [0, 1] at the input size."""
        verdicts: list[Verdict] = []
        for start in range(0, len(x), self.max_batch):
            chunk = x[start : start + self.max_batch]
            verdicts.extend(self._verdicts(chunk, [0.0] * len(chunk)))
        return verdicts

    @torch.no_grad()
    def scores(
        self, x: torch.Tensor, tiles: torch.Tensor | None = None, owner: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Robust softmax (B, K) and each detector's scores (B,) for a model-space batch (no chunking), with
        the images' native tiles (``native.native_tiles``) when they have any.

        Calibration and evaluation call this, so they measure exactly what the engine serves.
        """
        x = x.to(self.device, torch.float32)
        robust_probs = F.softmax(self.serving[det.ROBUST](x).float(), dim=1)
        return robust_probs, self._detector_scores(x, robust_probs, tiles, owner)

    def _detector_scores(
        self,
        x: torch.Tensor,
        robust_probs: torch.Tensor,
        tiles: torch.Tensor | None,
        owner: torch.Tensor | None,
        known: dict[tuple[str, str], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores of the comparison detectors (model views of x) and of the perturbation detector (x and tiles);
        ``known``: views already computed besides the robust one (the standard one, when the gate read it)."""
        compared = [d for d in self.detectors if d.name != det.NATIVE_DETECTOR]
        known = {(det.ROBUST, det.IDENTITY): robust_probs, **(known or {})}
        probs = self.views.probabilities(x, det.needs_of(compared), known)
        scores = det.score(compared, probs)
        if any(d.name == det.NATIVE_DETECTOR for d in self.detectors):
            empty = torch.empty(0, *x.shape[1:2], native.TILE, native.TILE)
            tiles, owner = (tiles, owner) if tiles is not None else (empty, torch.empty(0, dtype=torch.long))
            logits = native.image_logits(self.serving[det.DETECTOR], x, tiles, owner)
            scores[det.NATIVE_DETECTOR] = F.softplus(logits)  # = -log p_clean of the deciding view
        return {d.name: scores[d.name].cpu() for d in self.detectors}

    def score_images(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``scores`` for decoded RGB images of any size, prepared as ``analyse`` prepares them (model input
        and native tiles), in chunks of ``max_batch``."""
        probs: list[torch.Tensor] = []
        parts: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start : start + self.max_batch]
            x = to_model_input(chunk, self.input_size)
            tiles, owner = native.native_tiles([np.asarray(image) for image in chunk])
            p, scores = self.scores(x, tiles, owner)
            probs.append(p.cpu())
            parts.append(scores)
        if not parts:
            return torch.empty(0, len(self.classes)), {d.name: torch.empty(0) for d in self.detectors}
        return torch.cat(probs), {k: torch.cat([part[k] for part in parts]) for k in parts[0]}

    def in_domain(
        self,
        robust_probs: torch.Tensor,
        scores: dict[str, torch.Tensor],
        images: Sequence[Image.Image] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The in-domain probability or score per image (None without a gate or a domain model) and whether its
        label is confident.  With a domain gate it reads the decoded ``images`` as served (required then)."""
        if self.gate is not None:
            if images is None:
                raise ValueError("the domain gate reads the images as served: pass them")
            x = to_model_input(images, self.input_size).to(self.device)
            with torch.no_grad(), domain_gate.penultimate(self.serving[det.ROBUST]) as caught:
                logits = self.serving[det.ROBUST](x).float()
            standard = self._standard_for_gate(x)[0]
            return self._gate(caught.value, logits, self._cues(images, x), standard)
        domain = self.calibration.domain if self.calibration else None
        if domain is None:
            return None, torch.ones(len(robust_probs), dtype=torch.bool)
        logit = domain.logit(robust_probs, scores)
        return torch.sigmoid(logit), logit >= domain.threshold

    def _gate(
        self,
        features: torch.Tensor | None,
        logits: torch.Tensor,
        cues: torch.Tensor,
        standard_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.gate is not None and features is not None
        standard = standard_features.flatten(1) if standard_features is not None else None
        probability = self.gate.probability(features.flatten(1), logits, cues, standard)
        return probability, self.gate.confident(probability)

    @torch.no_grad()
    def _standard_for_gate(self, x: torch.Tensor) -> tuple[torch.Tensor | None, dict[tuple[str, str], torch.Tensor]]:
        """For a gate that reads them, the standard model's features, and its softmax as a view the detectors
        then take instead of computing it again (one standard forward either way)."""
        if self.gate is None or not self.gate.reads_standard:
            return None, {}
        with domain_gate.penultimate(self.serving[det.STANDARD]) as caught:
            logits = self.serving[det.STANDARD](x).float()
        return caught.value, {(det.STANDARD, det.IDENTITY): F.softmax(logits, dim=1)}

    def _cues(self, images: Sequence[Image.Image | np.ndarray] | None, x: torch.Tensor) -> torch.Tensor:
        """The gate's cues of the images as served; of the model input when there are none (model-space input);
        zeros when the gate reads no cues (computing them would cost time for nothing)."""
        if self.gate is None or not self.gate.cues:
            return torch.zeros(len(x), len(domain_gate.CUES))
        return domain_gate.cues_of(images) if images else domain_gate.model_space_cues(x)

    def combined(self, scores: dict[str, torch.Tensor], tiled: torch.Tensor) -> torch.Tensor | None:
        """The calibrated combined score per image (``Calibration.combined``; ``tiled``: which images had native
        tiles); None without a calibration."""
        return self.calibration.combined(scores, tiled) if self.calibration else None

    # --- internals ---------------------------------------------------------------------------------------
    def _analyse_chunk(self, items: Sequence[bytes | Image.Image]) -> list[Verdict | ImageError]:
        """Each image is decoded under the process's pixel budget and dropped as soon as its model input and
        native tiles are cut: a chunk keeps a few KB per image, not its decoded pixels (eight 24 Mpx images in
        one scan held 2.3 GB)."""
        inputs: list[torch.Tensor] = []
        tiles: list[list[np.ndarray]] = []
        cues: list[np.ndarray] = []  # the domain gate's cues of the images as served (a few numbers each)
        tiled: list[bool] = []
        decode_ms: list[float] = []
        results: list[Verdict | ImageError | None] = []
        for item in items:
            start = time.perf_counter()
            try:
                with self._decoded(item) as image:
                    tensor = to_model_input([image], self.input_size)
                    cut = native.tiles_of(image) if self.detector is not None else []
                    has_tiles = native.has_tiles(image.height, image.width)
                    if self.gate is not None and self.gate.cues:
                        cues.append(domain_gate.image_cues(image))
            except ImageError as err:
                results.append(err)
                continue
            inputs.append(tensor)
            tiles.append(cut)
            tiled.append(has_tiles)
            decode_ms.append((time.perf_counter() - start) * 1000)
            results.append(None)
        native_view = native.stack_tiles(tiles) if self.detector is not None and inputs else None
        served_cues = torch.from_numpy(np.stack(cues)) if cues else None
        verdicts = iter(self._verdicts(torch.cat(inputs), decode_ms, native_view, tiled, served_cues) if inputs else [])
        return [r if r is not None else next(verdicts) for r in results]

    def _decoded(self, item: bytes | Image.Image) -> contextlib.AbstractContextManager[Image.Image]:
        if isinstance(item, Image.Image):
            return holding(item, self.limits)
        if isinstance(item, bytes | bytearray | memoryview):
            return decoding(bytes(item), self.limits, self.draft_size)
        raise TypeError(f"expected image bytes or a PIL image, got {type(item).__name__}")

    def _synchronise(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def _verdicts(
        self,
        x: torch.Tensor,
        decode_ms: Sequence[float],
        native_view: tuple[torch.Tensor, torch.Tensor] | None = None,
        tiled: Sequence[bool] | None = None,
        cues: torch.Tensor | None = None,
    ) -> list[Verdict]:
        """Verdicts for a model-space batch; ``native_view`` the tiles of the images as served and their owners
        (``native.stack_tiles``), ``tiled`` which images are large enough for tiles (default: none, as for
        model-space input), ``cues`` the domain gate's cues of the images as served (default: of the model
        input)."""
        n = len(x)
        x = x.to(self.device, torch.float32)
        start = time.perf_counter()
        # The gate reads the robust model's penultimate features from this same forward.
        tap = domain_gate.penultimate(self.serving[det.ROBUST]) if self.gate else contextlib.nullcontext()
        with tap as caught:
            logits = self.serving[det.ROBUST](x).float()
        robust_probs = F.softmax(logits, dim=1)
        self._synchronise()
        after_inference = time.perf_counter()
        tiles, owner = native_view if native_view is not None else (None, None)
        standard_features, known = self._standard_for_gate(x)
        scores = self._detector_scores(x, robust_probs, tiles, owner, known)
        combined = self.combined(scores, torch.tensor(tiled or [False] * n, dtype=torch.bool))
        if self.gate is not None:
            cues = cues if cues is not None else self._cues(None, x)
            in_domain, confident = self._gate(caught.value, logits, cues, standard_features)
        self._synchronise()
        end = time.perf_counter()
        inference_ms = (after_inference - start) * 1000 / n
        detection_ms = (end - after_inference) * 1000 / n

        robust_probs = robust_probs.cpu()
        top_p, top_i = robust_probs.topk(self.top_k, dim=1)
        threshold = self.calibration.threshold if self.calibration else None
        calibration_version = self.calibration.version if self.calibration else None
        if self.gate is None:
            in_domain, confident = self.in_domain(robust_probs, scores)
        verdicts = []
        for i in range(n):
            score = float(combined[i]) if combined is not None else None
            verdicts.append(
                Verdict(
                    label=self.classes[int(top_i[i, 0])] if confident[i] else None,
                    label_index=int(top_i[i, 0]),
                    confidence=float(top_p[i, 0]),
                    in_domain=float(in_domain[i]) if in_domain is not None else None,
                    top_k=[(self.classes[int(j)], float(p)) for p, j in zip(top_p[i], top_i[i], strict=True)],
                    scores={k: float(v[i]) for k, v in scores.items()},
                    combined=score,
                    flagged=None if score is None else bool(score > threshold),
                    threshold=threshold,
                    model_version=self.model_version,
                    robust_version=self.robust.version,
                    standard_version=self.standard.version,
                    calibration_version=calibration_version,
                    timings_ms={"decode": decode_ms[i], "inference": inference_ms, "detection": detection_ms},
                )
            )
        return verdicts


def default_detector_dir(robust_dir: str | Path) -> Path:
    """Where a robust bundle's perturbation detector lives (trained for it, like its calibration)."""
    return Path(robust_dir) / DETECTOR_FOLDER


def find_detector(robust_dir: str | Path, detector_dir: str | Path | None = None) -> Bundle | None:
    """The perturbation detector bundle: ``detector_dir`` if given, else the robust bundle's own if it has one."""
    if detector_dir is None and default_detector_dir(robust_dir).is_dir():
        detector_dir = default_detector_dir(robust_dir)
    return load_bundle(detector_dir) if detector_dir is not None else None


def _check_detector(robust: Bundle, detector: Bundle) -> None:
    if detector.metadata["input_size"] != robust.metadata["input_size"]:
        raise EngineError(
            f"the perturbation detector takes {detector.metadata['input_size']} inputs, the robust model "
            f"{robust.metadata['input_size']}"
        )
    if detector.classes != list(det.DETECTOR_CLASSES):
        raise EngineError(f"{detector.path} is not a perturbation detector (classes {detector.classes})")


def _check_gate(gate: domain_gate.DomainGate, robust: Bundle, standard: Bundle) -> None:
    """The gate reads these bundles' features: it must have been trained on exactly them."""
    served = {"robust": robust.version, "standard": standard.version}
    for role, version in gate.metadata["for_bundles"].items():
        if served.get(role) != version:
            raise EngineError(
                f"the domain gate {gate.version} was trained on {role} bundle {version}, not {served.get(role)}; "
                "train one with `python -m worker.research.train_gate`"
            )


def _check_compatible(robust: Bundle, standard: Bundle) -> None:
    for key in ("classes", "input_size"):
        if robust.metadata[key] != standard.metadata[key]:
            raise EngineError(
                f"robust and standard bundles differ in {key}: {robust.metadata[key]} vs {standard.metadata[key]}"
            )


@functools.lru_cache(maxsize=4)
def load_engine(
    robust_dir: str,
    standard_dir: str,
    calibration_path: str | None = None,
    device: str = "auto",
    max_batch: int = 64,
    threads: int | None = None,
) -> Engine:
    """The process-wide engine for these arguments: bundles are read and verified once per process."""
    return Engine.from_bundles(robust_dir, standard_dir, calibration_path, device, max_batch, threads)
