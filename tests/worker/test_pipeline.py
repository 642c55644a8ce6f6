"""scanner.analysis.pipeline against a real SQLite database and the tiny real engine: idempotent verdicts, typed decode
failures, the careful redelivery after a crash, and dead-lettering of a poison input; and the in-process hand-over
(scanner.analysis.inprocess) that the embedded API and the local submitter share: its batching and its retry rule."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from scanner.analysis.inprocess import InProcessAnalysis
from scanner.analysis.pipeline import analyse_images
from scanner.db import migrate, queries
from scanner.db.models import DeadLetter, Image, ScanItem, Verdict
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from scanner.versions import UNCALIBRATED
from tests.support.queries import add_item, record_image


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def sessions(tmp_path: Path):  # noqa: ANN201
    url = f"sqlite:///{tmp_path / 'pipeline.db'}"
    migrate.upgrade(url)
    return make_sessionmaker(make_engine(url))


def submit(sessions, engine, blobs: list[bytes]) -> tuple[str, list[int]]:  # noqa: ANN001
    """A scan with these images, as the API records it."""
    import hashlib

    from scanner.db.keys import get_or_create_tenant

    with transaction(sessions) as session:
        tenant = get_or_create_tenant(session, "t")
        scan = queries.new_scan(session, tenant.id, "api", None, engine.model_version, UNCALIBRATED)
        ids = []
        for position, data in enumerate(blobs):
            image = record_image(session, hashlib.sha256(data).hexdigest(), data, "PNG", 12, 12)
            add_item(session, scan, position, image=image)
            ids.append(image.id)
        return scan.id, ids


def states(sessions, scan_id: str) -> list[tuple[str, str | None]]:  # noqa: ANN001
    with sessions() as session:
        rows = session.execute(
            select(ScanItem.state, ScanItem.error_code).where(ScanItem.scan_id == scan_id).order_by(ScanItem.position)
        )
        return [tuple(row) for row in rows]


def count(sessions, model) -> int:  # noqa: ANN001
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_verdicts_are_written_once_whatever_the_deliveries(sessions, engine) -> None:  # noqa: ANN001
    scan_id, ids = submit(sessions, engine, [png(1), png(2)])
    first = analyse_images(sessions, engine, ids)
    again = analyse_images(sessions, engine, ids)
    assert (first.verdicts, again.verdicts, again.skipped) == (2, 0, 2)
    assert count(sessions, Verdict) == 2
    assert states(sessions, scan_id) == [("done", None), ("done", None)]
    with sessions() as session:
        verdict = session.scalars(select(Verdict)).first()
        assert verdict.calibration_version == UNCALIBRATED and verdict.flagged is None
        assert session.scalar(select(func.max(Image.attempts))) == 0


def test_bytes_that_do_not_decode_fail_their_item_with_the_code(sessions, engine) -> None:  # noqa: ANN001
    truncated = png(3)[:-40]
    scan_id, ids = submit(sessions, engine, [truncated, png(4)])
    outcome = analyse_images(sessions, engine, ids)
    assert outcome.failed == 1 and outcome.verdicts == 1
    assert states(sessions, scan_id)[0][0] == "failed"
    assert states(sessions, scan_id)[0][1] in {"truncated", "corrupt"}


def test_a_redelivery_after_a_crash_goes_one_by_one_and_finishes(sessions, engine) -> None:  # noqa: ANN001
    scan_id, ids = submit(sessions, engine, [png(5), png(6), png(7)])
    with transaction(sessions) as session:  # what a worker killed mid-batch leaves behind
        for image in session.scalars(select(Image)):
            image.attempts = 1
    outcome = analyse_images(sessions, engine, ids, max_deliveries=3)
    assert outcome.careful and outcome.verdicts == 3
    assert states(sessions, scan_id) == [("done", None)] * 3


class PoisonEngine:
    """The real engine, except that one image's analysis raises, as a decoder bug would."""

    def __init__(self, engine, poison: bytes) -> None:  # noqa: ANN001
        self.inner, self.poison = engine, poison
        self.model_version, self.calibration = engine.model_version, engine.calibration

    def analyse(self, items):  # noqa: ANN001, ANN201
        if self.poison in items:
            raise RuntimeError("decoder crashed")
        return self.inner.analyse(items)


def test_a_poison_input_is_dead_lettered_and_the_rest_of_its_batch_finishes(sessions, engine) -> None:  # noqa: ANN001
    poison = png(8)
    scan_id, ids = submit(sessions, engine, [png(9), poison, png(10)])
    bad = PoisonEngine(engine, poison)
    deliveries = 0
    while True:
        deliveries += 1
        try:
            outcome = analyse_images(sessions, bad, ids, max_deliveries=3, task_id=f"task-{deliveries}")
            break
        except RuntimeError:
            assert deliveries < 10, "the poison input was retried forever"
    assert outcome.dead_lettered == 1 and deliveries == 4  # 3 failed deliveries, then the dead letter
    assert states(sessions, scan_id) == [("done", None), ("failed", "dead_lettered"), ("done", None)]
    with sessions() as session:
        letter = session.scalars(select(DeadLetter)).one()
        assert letter.image_id == ids[1] and letter.deliveries == 3 and letter.task_id == "task-4"


class RecordingEngine(PoisonEngine):
    """The poison engine, recording the size of every batch it is given."""

    def __init__(self, engine, poison: bytes) -> None:  # noqa: ANN001
        super().__init__(engine, poison)
        self.batches: list[int] = []

    def analyse(self, items):  # noqa: ANN001, ANN201
        self.batches.append(len(items))
        return super().analyse(items)


def test_in_process_analysis_batches_what_arrives_together_and_settles_a_poison_input_alone(
    sessions,  # noqa: ANN001
    engine,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    """No relay runs here (the local submitter has none): the retry rule alone must settle every image."""
    poison = png(13)
    scan_id, ids = submit(sessions, engine, [png(11), poison, png(12)])
    recording = RecordingEngine(engine, poison)
    analysis = InProcessAnalysis(Settings(data_dir=tmp_path, max_deliveries=3), sessions, recording)

    async def run() -> list[tuple[str, str | None]]:
        await analysis.start()
        analysis.put(ids[:1])  # two hand-overs in a row: one batch
        analysis.put(ids[1:])
        deadline = time.monotonic() + 120
        while any(state == "pending" for state, _ in states(sessions, scan_id)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await analysis.stop()
        return states(sessions, scan_id)

    assert asyncio.run(run()) == [("done", None), ("failed", "dead_lettered"), ("done", None)]
    # The batch of three fails; the second try goes one by one (three calls), two more fail the poison alone,
    # and the fourth (max_deliveries + 1) dead-letters it without calling the engine.
    assert recording.batches == [3, 1, 1, 1, 1]
    assert count(sessions, DeadLetter) == 1 and count(sessions, Verdict) == 2
