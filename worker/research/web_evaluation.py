"""The web-image part of the evaluation: the whole TEST split of the web-image set as served (per kind, drawn
patterns apart), its benign changes and thumbnails, and attacks from the evaluation-only family through the
resize and at native resolution, after each delivery.  See ``worker.research.evaluate``."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from torch import nn

from worker.engine.engine import Engine
from worker.research import delivery, web_images
from worker.research.detection_metrics import rate_with_interval
from worker.research.detector_data import cap_size
from worker.research.native_attacks import NativeAttack
from worker.research.native_attacks import fooled as native_fooled
from worker.research.scoring import delivered_stats, serve
from worker.research.terminal import make_progress

WEB_ATTACKS = (
    NativeAttack("resize", "pgd", 8),
    NativeAttack("resize", "cw", 8),
    NativeAttack("resize", "pgd", 4),
    NativeAttack("native", "pgd", 8),
)
NATIVE_EVAL_SIDE = 256  # native-resolution attacks run on a centre crop this large (CPU cost)
RESIZE_EVAL_SIDE = 512  # attacks through the resize see larger images scaled down to this first (CPU cost)


def centre_crop(image: Image.Image, side: int) -> Image.Image:
    if max(image.size) <= side:
        return image
    left, top = max(0, (image.width - side) // 2), max(0, (image.height - side) // 2)
    return image.crop((left, top, left + min(side, image.width), top + min(side, image.height)))


def web_attack_start(image: Image.Image, spec: NativeAttack) -> Image.Image:
    """What a web attack of the evaluation runs on (CPU cost): a centre crop at native resolution, the image
    capped in size through the resize."""
    return centre_crop(image, NATIVE_EVAL_SIDE) if spec.route == "native" else cap_size(image, RESIZE_EVAL_SIDE)


def false_flags(records: Sequence[web_images.WebImage], combined: torch.Tensor, threshold: float) -> list[dict]:
    """The ordinary images flagged, highest score first, with their source picture: crops of one picture are
    not independent, so a reader needs to see whether the false flags are many pictures or one."""
    flagged = [(score, r) for r, score in zip(records, combined.tolist(), strict=True) if score > threshold]
    flagged.sort(key=lambda pair: pair[0], reverse=True)
    return [{"file": r.file, "source": r.source, "kind": r.kind, "score": round(score, 3)} for score, r in flagged]


def pictures_flagged(records: Sequence[web_images.WebImage], flagged: torch.Tensor) -> dict[str, Any]:
    """The source pictures with at least one crop flagged, among all pictures: the crops of one picture share
    its content, so a crop-level rate's interval is too narrow when the false flags cluster in a picture."""
    any_flagged: dict[str, bool] = {}
    for record, hit in zip(records, flagged.tolist(), strict=True):
        any_flagged[record.source] = any_flagged.get(record.source, False) or hit
    return rate_with_interval(torch.tensor(list(any_flagged.values()), dtype=torch.bool))


def evaluate_web(
    engine: Engine,
    web: Sequence[tuple[web_images.WebImage, Image.Image]],
    target: nn.Module,
    settings: dict[str, Any],
    console: Console,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The web-image part: test-split images as served, per kind; benign changes; attacks against ``target``
    (the evaluation-only family) through the resize and at native resolution, after each delivery."""
    threshold = engine.calibration.threshold
    drawn = [(r, image) for r, image in web if r.kind in web_images.SYNTHETIC_KINDS]
    ordinary = [(r, image) for r, image in web if r.kind not in web_images.SYNTHETIC_KINDS]
    records = [r for r, _ in ordinary]
    images = [image for _, image in ordinary]
    kinds = sorted({r.kind for r in records})
    populations: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {"n": len(ordinary), "clean": {}, "benign": {}, "attacks": {}, "drawn": {}}
    with make_progress(console) as progress:
        # Drawn patterns come from the generator that also made the training split's: a benign kind reported
        # apart, never among the ordinary images (nor changed or attacked, so those samples stay as before).
        if drawn:
            drawn_scores = serve(engine, [image for _, image in drawn], progress, "scoring drawn patterns")
            for kind in sorted({r.kind for r, _ in drawn}):
                mask = torch.tensor([r.kind == kind for r, _ in drawn])
                report["drawn"][kind] = {
                    "flagged": rate_with_interval((drawn_scores.combined > threshold)[mask]),
                    "flagged_images": false_flags(
                        [r for r, _ in drawn if r.kind == kind], drawn_scores.combined[mask], threshold
                    ),
                }
        clean = serve(engine, images, progress, "scoring web images")
        populations["web clean"] = clean.combined
        report["clean"]["all"] = {
            "flagged": rate_with_interval(clean.combined > threshold),
            "no_confident_class": rate_with_interval(~clean.confident),
            "flagged_images": false_flags(records, clean.combined, threshold),
            "pictures_flagged": pictures_flagged(records, clean.combined > threshold),
        }
        for kind in kinds:
            mask = torch.tensor([r.kind == kind for r in records])
            report["clean"][kind] = {
                "flagged": rate_with_interval((clean.combined > threshold)[mask]),
                "no_confident_class": rate_with_interval(~clean.confident[mask]),
            }
        rng = random.Random(settings["seed"])
        for name in settings["web_benign"]:
            changed = [delivery.BENIGN[name](image, rng) for image in images]
            scored = serve(engine, changed, progress, f"web benign {name}")
            report["benign"][name] = {"flagged": rate_with_interval(scored.combined > threshold)}
        # Icons and thumbnails: too small for native tiles, so the calibration's other population.
        thumbnails = [delivery.thumbnail(image, rng) for image in images]
        scored = serve(engine, thumbnails, progress, "web thumbnails")
        report["benign"]["thumbnail"] = {"flagged": rate_with_interval(scored.combined > threshold)}
        chosen = random.Random(settings["seed"]).sample(range(len(images)), min(settings["n_web_attack"], len(images)))
        subset = [images[i] for i in chosen]
        torch.manual_seed(settings["seed"])
        for spec in WEB_ATTACKS:
            started = time.perf_counter()
            task = progress.add_task(f"web attack {spec.name}", total=len(subset))
            sources, attacked, fooled = [], [], []
            for image in subset:
                source = web_attack_start(image, spec)
                pixels = delivery.to_array(source)
                adv = spec.run(target, pixels, engine.input_size, engine.device)
                sources.append(source)
                attacked.append(delivery.from_array(adv))
                fooled.append(native_fooled(target, pixels, adv, engine.input_size))
                progress.advance(task)
            base = serve(engine, sources, progress, f"web {spec.name} sources (clean)")
            record = {
                "attack": f"{spec.route} L-inf {spec.objective}, eps {spec.eps_255}/255, {spec.steps} steps, vs the "
                "evaluation-only family"
                + (f" on a centre crop of <= {NATIVE_EVAL_SIDE} px" if spec.route == "native" else ""),
                "n": len(subset),
                "fooled_target": rate_with_interval(torch.tensor(fooled)),
                "delivered": delivered_stats(
                    engine, attacked, base, settings["deliveries"], settings["seed"], progress, f"web {spec.name}"
                ),  # fmt: skip
                "seconds": round(time.perf_counter() - started, 1),
            }
            populations[f"web {spec.name}"] = serve(engine, attacked).combined
            report["attacks"][spec.name] = record
    return report, populations
