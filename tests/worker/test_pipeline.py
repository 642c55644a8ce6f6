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


def test_a_redelivery_after_a_crash_runs_in_halves_and_finishes(sessions, engine) -> None:  # noqa: ANN001
    scan_id, ids = submit(sessions, engine, [png(20 + i) for i in range(8)])
    with transaction(sessions) as session:  # what a worker killed mid-batch leaves behind
        for image in session.scalars(select(Image)):
            image.attempts = 1
    counting = PoisonEngine(engine, b"")  # no poison: the worker died for another reason
    outcome = analyse_images(sessions, counting, ids, max_deliveries=3)
    assert outcome.careful and outcome.verdicts == 8
    assert counting.runs == [4, 4]  # two halves, not eight images one at a time
    assert states(sessions, scan_id) == [("done", None)] * 8


class WorkerKilled(BaseException):
    """What the pipeline sees of a worker process killed mid-run: nothing after it (no handler catches it)."""


class PoisonEngine:
    """The real engine, except that one image's analysis raises, as a decoder bug would (``kills``: it takes
    the worker down, as a segfault would); ``runs`` holds the size of every batch the engine was given."""

    def __init__(self, engine, poison: bytes, kills: bool = False) -> None:  # noqa: ANN001
        self.inner, self.poison, self.kills = engine, poison, kills
        self.model_version, self.calibration = engine.model_version, engine.calibration
        self.runs: list[int] = []

    def analyse(self, items):  # noqa: ANN001, ANN201
        self.runs.append(len(items))
        if self.poison in items:
            raise WorkerKilled() if self.kills else RuntimeError("decoder crashed")
        return self.inner.analyse(items)


def deliver_until_settled(sessions, bad: PoisonEngine, ids: list[int]) -> int:  # noqa: ANN001
    """Deliver the batch again after each failure or death, as Celery would; returns the deliveries made."""
    for delivery in range(1, 30):
        try:
            analyse_images(sessions, bad, ids, max_deliveries=3, task_id=f"task-{delivery}")
            return delivery
        except (RuntimeError, WorkerKilled):
            continue
    raise AssertionError("the poison input was retried forever")


@pytest.mark.parametrize("kills", [False, True], ids=["raises", "kills-the-worker"])
def test_a_poison_among_many_images_costs_logarithmic_runs(sessions, engine, kills: bool) -> None:  # noqa: ANN001
    """32 real images, the 22nd poison: bisection isolates it in O(log n) runs (one image at a time took 34),
    every other image gets its verdict, and only the poison is dead-lettered."""
    blobs = [png(100 + i) for i in range(32)]
    scan_id, ids = submit(sessions, engine, blobs)
    bad = PoisonEngine(engine, blobs[21], kills=kills)
    deliveries = deliver_until_settled(sessions, bad, ids)
    assert len(bad.runs) <= 2 * 5 + 4, bad.runs  # 2 log2(32) halvings, the first run and the poison's retries
    expected = [("done", None)] * 32
    expected[21] = ("failed", "dead_lettered")
    assert states(sessions, scan_id) == expected
    with sessions() as session:
        assert session.scalars(select(DeadLetter.image_id)).all() == [ids[21]]
    assert deliveries <= 2 * 5 + 2


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
    # The two hand-overs share one batch of three, which fails; after it the pipeline bisects (halves, then the
    # poison alone), so no later call holds the whole batch again, and the poison is dead-lettered alone.
    assert recording.batches[0] == 3 and all(size < 3 for size in recording.batches[1:])
    assert 1 in recording.batches[1:]
    assert count(sessions, DeadLetter) == 1 and count(sessions, Verdict) == 2
