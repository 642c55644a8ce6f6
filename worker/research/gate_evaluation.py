"""What the domain gate's verdicts come to on images it never trained on (``worker.research.train_gate``): per
web-image kind, the share given "no confident class"; on CIFAR-10, the share that keeps its label and the
accuracy on the kept ones beside the robust model's over all; each rate with its 95% Wilson interval."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from worker.research import web_images
from worker.research.detection_metrics import rate_with_interval


def cifar_report(confident: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Kept share, the robust model's accuracy on the kept images and on all of them."""
    correct = logits.argmax(1) == labels
    return {
        "kept": rate_with_interval(confident),
        "accuracy_on_kept": rate_with_interval(correct[confident]),
        "accuracy_on_all": rate_with_interval(correct),
    }


def web_report(
    confident: torch.Tensor, records: Sequence[web_images.WebImage], shows_class: torch.Tensor
) -> dict[str, Any]:
    """ "No confident class" on the images that show none of the classes, over all and per kind (drawn patterns
    apart from the ordinary images); the images that may show a class reported on their own (kept share);
    the source pictures whose crops kept a label most often (crops of one picture are not independent)."""
    outside = ~shows_class
    ordinary = torch.tensor([r.kind not in web_images.SYNTHETIC_KINDS for r in records], dtype=torch.bool)
    report: dict[str, Any] = {
        "ordinary_showing_no_class": rate_with_interval(~confident[outside & ordinary]),
        "by_kind": {},
        "showing_a_class_kept": rate_with_interval(confident[shows_class]),
    }
    for kind in sorted({r.kind for r in records}):
        mask = torch.tensor([r.kind == kind for r in records], dtype=torch.bool) & outside
        if mask.any():
            report["by_kind"][kind] = rate_with_interval(~confident[mask])
    report["pictures"] = picture_report(
        confident[outside], [r for r, o in zip(records, outside.tolist(), strict=True) if o]
    )
    return report


def picture_report(confident: torch.Tensor, records: Sequence[web_images.WebImage], worst: int = 10) -> dict[str, Any]:
    """Per source picture, the share of its crops given "no confident class"; the pictures with at least one
    crop labelled, and the ``worst`` pictures by that share."""
    crops: dict[str, list[bool]] = defaultdict(list)
    for record, kept in zip(records, confident.tolist(), strict=True):
        crops[record.source].append(kept)
    labelled = {source: sum(kept) / len(kept) for source, kept in crops.items()}
    ranked = sorted(labelled.items(), key=lambda item: -item[1])
    return {
        "n_pictures": len(crops),
        "pictures_with_a_crop_labelled": rate_with_interval(torch.tensor([v > 0 for v in labelled.values()])),
        "most_labelled": [
            {"source": source, "crops": len(crops[source]), "labelled": round(share, 3)}
            for source, share in ranked[:worst]
            if share > 0
        ],
    }


def keep_threshold(scores: torch.Tensor, keep: float) -> float:
    """The highest threshold that keeps at least ``keep`` of ``scores`` (score >= threshold is kept)."""
    ordered = scores.double().sort(descending=True).values
    return float(ordered[min(len(ordered) - 1, max(0, int(torch.tensor(keep * len(ordered)).ceil()) - 1))])
