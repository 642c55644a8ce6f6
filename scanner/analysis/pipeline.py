"""Analyse queued images and record their verdicts: the one code path of the Celery task and the embedded mode.

Crash safety.  Before the engine runs on a group of images, each image's ``attempts`` is raised and committed; a
verdict resets it.  A delivery that finds images with attempts left over knows an earlier delivery died on
them (a worker killed, a segfault in a decoder).  It bisects instead of retrying the batch whole: the images
of the run that died hold the most attempts (every run of a delivery raises its images to one level above
all that is pending), so they are the suspects, and they are run in halves, a failing half in halves again,
down to single images; the other pending images run together after them.  A poison image so costs
O(log n) runs, not one run per image of its batch, and an image found alone at the top level with
``max_deliveries`` attempts is dead-lettered instead of being tried again.  The other images of its batch
still get their verdicts.  A failure inside the process (an exception) bisects within the delivery; a
crash leaves the levels for the next delivery to read.
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
    top = max(attempts for _, attempts in todo)
    run = _Bisection(factory, engine, outcome, level=top + 1)
    if top == 0:  # a first delivery: the batch whole, in halves if that fails here
        run.group([image_id for image_id, _ in todo])
    else:
        outcome.careful = True
        suspects = [image_id for image_id, attempts in todo if attempts == top]
        if len(suspects) == 1 or top >= max_deliveries + bisection_depth(len(todo)):
            # alone in the run that died, or past every level a bisection could raise an innocent image to
            suspects = [
                image_id
                for image_id in suspects
                if not _dead_letter_if_exhausted(
                    image_id, factory, model_version, calibration_version, max_deliveries, task_id, outcome
                )
            ]
        run.halves(suspects)  # they ran together when a delivery died: never whole again
        run.group([image_id for image_id, attempts in todo if attempts < top])
    if run.failure is not None:
        raise run.failure  # the task is retried; the failing images' levels count toward the dead letter
    return outcome


def bisection_depth(size: int) -> int:
    """How many halvings isolate one image of ``size``: the levels an innocent image may climb beside a poison."""
    return max(size - 1, 0).bit_length()


class _Bisection:
    """The runs of one delivery; each run's images are raised to ``level`` before the engine starts, so a run
    that dies is the one group at the top level when the next delivery looks."""

    def __init__(self, factory: sessionmaker[Session], engine: Analyser, outcome: Outcome, level: int) -> None:
        self.factory, self.engine, self.outcome, self.level = factory, engine, outcome, level
        self.failure: Exception | None = None

    def group(self, image_ids: list[int]) -> None:
        """Run these images together; if that fails in the process, their halves."""
        if not image_ids:
            return
        _start(image_ids, self.factory, self.level)
        try:
            _analyse_and_record(image_ids, self.factory, self.engine, self.outcome)
        except Exception as err:  # noqa: BLE001 - the others still get their verdicts; re-raised at the end
            if len(image_ids) == 1:
                log.warning("image %d failed its analysis: %r", image_ids[0], err)
                self.failure = self.failure or err
                return
            self.halves(image_ids)

    def halves(self, image_ids: list[int]) -> None:
        if len(image_ids) <= 1:
            self.group(image_ids)
            return
        middle = len(image_ids) // 2
        self.group(image_ids[:middle])
        self.group(image_ids[middle:])


def _start(image_ids: list[int], factory: sessionmaker[Session], level: int | None = None) -> None:
    with transaction(factory) as session:
        queries.count_attempt(session, image_ids, level)


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
