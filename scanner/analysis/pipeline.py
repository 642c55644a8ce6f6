"""Analyse queued images and record their verdicts: the one code path of the Celery task and the embedded mode.

Crash safety.  Before the engine runs, each image's ``attempts`` is incremented and committed; a verdict resets
it.  A delivery that finds an image with attempts left over knows an earlier delivery died on this batch (a
worker killed, a segfault in a decoder), so it goes one image at a time, and an image that reaches
``max_deliveries`` unfinished attempts is dead-lettered instead of being tried again: a poison input costs a
few deliveries, never a loop, and the other images of its batch still get their verdicts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from scanner.db import queries
from scanner.db.models import Image
from scanner.db.session import transaction
from scanner.versions import UNCALIBRATED
from worker.engine.imaging import ImageError

log = logging.getLogger(__name__)


class Analyser(Protocol):
    """What the pipeline needs of ``worker.engine.Engine``."""

    model_version: str

    def analyse(self, items: Sequence[bytes]) -> list: ...


@dataclass
class Outcome:
    verdicts: int = 0
    failed: int = 0
    dead_lettered: int = 0
    skipped: int = 0  # already had a verdict (a redelivery, or the same image in two scans)
    careful: bool = False
    errors: dict[str, int] = field(default_factory=dict)


def engine_for(settings: Any) -> Any:
    """The process-wide engine for ``settings`` (bundles, calibration, device, batch size, threads); torch is
    imported here, on first use, so that importing this module stays cheap."""
    from worker.engine import load_engine

    calibration = str(settings.calibration) if settings.calibration else None
    return load_engine(
        str(settings.robust_bundle),
        str(settings.standard_bundle),
        calibration,
        settings.device,
        settings.batch_size,
        settings.engine_threads,
    )


def calibration_version_of(engine: Analyser) -> str:
    calibration = getattr(engine, "calibration", None)
    return calibration.version if calibration is not None else UNCALIBRATED


def analyse_images(
    factory: sessionmaker[Session],
    engine: Analyser,
    image_ids: Sequence[int],
    max_deliveries: int = 3,
    task_id: str | None = None,
) -> Outcome:
    model_version, calibration_version = engine.model_version, calibration_version_of(engine)
    with transaction(factory) as session:
        images = queries.images_to_analyse(session, image_ids, model_version, calibration_version)
        todo = [(image.id, image.attempts) for image in images]
    outcome = Outcome(skipped=len(set(image_ids)) - len(todo))
    if outcome.skipped:  # verdicts that exist already settle the items waiting for them (another tenant's image)
        with transaction(factory) as session:
            queries.settle_known(session, image_ids, model_version, calibration_version)
    if not todo:
        return outcome
    if all(attempts == 0 for _, attempts in todo):
        _start([image_id for image_id, _ in todo], factory)
        _analyse_and_record([image_id for image_id, _ in todo], factory, engine, outcome)
        return outcome
    outcome.careful = True
    failure: Exception | None = None
    for image_id, _ in todo:
        if _dead_letter_if_exhausted(
            image_id, factory, model_version, calibration_version, max_deliveries, task_id, outcome
        ):
            continue
        _start([image_id], factory)
        try:
            _analyse_and_record([image_id], factory, engine, outcome)
        except Exception as err:  # noqa: BLE001 - the others still get their verdicts; re-raised below
            log.warning("image %d failed its analysis: %r", image_id, err)
            failure = failure or err
    if failure is not None:
        raise failure  # the task is retried; this image's attempts already count toward the dead letter
    return outcome


def _start(image_ids: list[int], factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        queries.count_attempt(session, image_ids)


def _dead_letter_if_exhausted(
    image_id: int,
    factory: sessionmaker[Session],
    model_version: str,
    calibration_version: str,
    max_deliveries: int,
    task_id: str | None,
    outcome: Outcome,
) -> bool:
    with transaction(factory) as session:
        image = session.get(Image, image_id)
        if image is None or image.attempts < max_deliveries:
            return False
        log.error("image %s dead-lettered after %d unfinished analyses", image.sha256, image.attempts)
        queries.dead_letter(
            session,
            image,
            model_version,
            calibration_version,
            task_id,
            "the analysis never finished (the worker died or the task kept failing)",
        )
    outcome.dead_lettered += 1
    return True


def _analyse_and_record(
    image_ids: list[int], factory: sessionmaker[Session], engine: Analyser, outcome: Outcome
) -> None:
    with transaction(factory) as session:
        blobs = queries.blobs_of(session, image_ids)
    results = engine.analyse(blobs)
    model_version, calibration_version = engine.model_version, calibration_version_of(engine)
    with transaction(factory) as session:
        verdicts = {}
        for image_id, result in zip(image_ids, results, strict=True):
            if isinstance(result, ImageError):  # the bytes cannot be decoded, and never will be: no retry
                queries.fail_image(session, image_id, model_version, calibration_version, result.code, result.message)
                outcome.failed += 1
                outcome.errors[result.code] = outcome.errors.get(result.code, 0) + 1
                continue
            verdict = result.to_dict()
            verdict["calibration_version"] = verdict["calibration_version"] or UNCALIBRATED
            verdicts[image_id] = verdict
        queries.write_verdicts(session, verdicts)
        outcome.verdicts += len(verdicts)
