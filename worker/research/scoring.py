"""Images scored by the engine as the service serves them (the model input and the native-resolution tiles).

``Scored`` keeps what the calibration fits on (robust softmax and each detector's score); ``Served`` adds what
the verdicts say (the calibrated combined score, both models' labels, whether a class is named), which the
evaluation measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from rich.progress import Progress

from training.attacks import predict
from worker.engine import native
from worker.engine.engine import Engine
from worker.engine.images import to_model_input
from worker.research import delivery
from worker.research.detection_metrics import auroc, rate_with_interval


@dataclass
class Scored:
    """What the engine computed for a set of images: robust softmax (N, K) and each detector's scores (N,)."""

    probs: torch.Tensor
    scores: dict[str, torch.Tensor]
    tiled: torch.Tensor  # (N,) bool: the image was large enough for native tiles

    def subset(self, mask: torch.Tensor) -> Scored:
        return Scored(self.probs[mask], {k: v[mask] for k, v in self.scores.items()}, self.tiled[mask])

    @staticmethod
    def concat(parts: Sequence[Scored]) -> Scored:
        return Scored(
            torch.cat([p.probs for p in parts]),
            {k: torch.cat([p.scores[k] for p in parts]) for k in parts[0].scores},
            torch.cat([p.tiled for p in parts]),
        )


def score_images(
    engine: Engine, images: Sequence[Image.Image], progress: Progress | None = None, label: str = ""
) -> Scored:
    """The engine's scores of decoded images as served (model input and native tiles), with a progress bar."""
    task = progress.add_task(label, total=len(images)) if progress is not None else None
    parts = []
    for start in range(0, len(images), engine.max_batch):
        chunk = images[start : start + engine.max_batch]
        parts.append(Scored(*engine.score_images(chunk), native.tiled(chunk)))
        if progress is not None:
            progress.advance(task, len(chunk))
    return Scored.concat(parts)


@dataclass
class Served:
    """What the verdicts of a set of images say."""

    combined: torch.Tensor  # (N,) float64, the calibrated combined score
    detectors: dict[str, torch.Tensor]
    robust_pred: torch.Tensor
    standard_pred: torch.Tensor
    confident: torch.Tensor  # the verdict names a class (in domain)


def serve(engine: Engine, images: Sequence[Image.Image], progress: Progress | None = None, label: str = "") -> Served:
    """``score_images`` and what the verdicts make of it; the standard model's labels and the domain model are
    taken in the engine's batches, as the service takes them."""
    scored = score_images(engine, images, progress, label)
    standard, confident = [], []
    for start in range(0, len(images), engine.max_batch):
        chunk = images[start : start + engine.max_batch]
        x = to_model_input(chunk, engine.input_size).to(engine.device)
        standard.append(predict(engine.standard.model, x).cpu())
        part = slice(start, start + len(chunk))
        confident.append(engine.in_domain(scored.probs[part], {k: v[part] for k, v in scored.scores.items()})[1])
    combined = engine.combined(scored.scores, scored.tiled)
    return Served(combined.double(), scored.scores, scored.probs.argmax(1), torch.cat(standard), torch.cat(confident))


def delivered_stats(
    engine: Engine,
    images: Sequence[Image.Image],
    clean: Served,
    deliveries: Sequence[str],
    seed: int,
    progress: Progress,
    label: str,
) -> dict[str, Any]:
    """Per delivery: the flag rate at the operating point with its interval, and AUROC against ``clean``."""
    out: dict[str, Any] = {}
    threshold = engine.calibration.threshold
    for name in deliveries:
        scored = serve(engine, delivery.deliver_all(images, name, seed), progress, f"{label} via {name}")
        out[name] = {
            "flagged": rate_with_interval(scored.combined > threshold),
            "auroc": auroc(clean.combined, scored.combined),
        }
    return out
