"""The optional robustness check: Square, a black-box attack, against the deployed robust model, in a run."""

from __future__ import annotations

from typing import Any

import pytest

from scanner.analysis.pipeline import engine_for
from scanner.audits import robustness, runner
from scanner.db.models import AuditRun
from scanner.settings import Settings
from tests.support.audit_sites import Site
from tests.support.images import crawlable_png


@pytest.fixture(scope="module")
def engine() -> Any:
    return engine_for(Settings(engine_threads=1))


def test_no_budget_flips_nothing_and_a_large_one_flips_most(engine: Any) -> None:
    blobs = [crawlable_png(seed, 32) for seed in range(6)]
    none = robustness.check(engine, blobs, eps=0.0, queries=50)
    assert (none.sample, none.flipped, none.skipped) == (6, 0, 0)
    large = robustness.check(engine, blobs, eps=0.5, queries=100)
    assert large.flipped >= 4 and large.flip_rate == large.flipped / 6
    assert large.model_version == engine.model_version


def test_undecodable_bytes_are_skipped_not_fatal(engine: Any) -> None:
    result = robustness.check(engine, [b"not an image", crawlable_png(9, 32)], eps=8 / 255, queries=20)
    assert (result.sample, result.skipped) == (1, 1)


def test_the_sample_is_seeded_and_bounded() -> None:
    items = list(range(100))
    assert robustness.sample_images(items, 10, seed=3) == robustness.sample_images(items, 10, seed=3)
    assert len(set(robustness.sample_images(items, 10, seed=3))) == 10
    assert robustness.sample_images(items[:4], 10) == items[:4]


@pytest.mark.browser
def test_a_run_records_the_check(settings: Settings, sessions: Any, site: Site, make_audit: Any) -> None:
    audit_id = make_audit(site.url, robustness_sample=2)
    result = runner.run_now(settings, audit_id)
    assert result.status == "done", result.error
    assert result.counts["robustness_sample"] == 2 and 0 <= result.counts["robustness_flipped"] <= 2
    with sessions() as session:
        run = session.get_one(AuditRun, result.run_id)
    assert run.robustness["sample"] == 2 and run.robustness["eps"] == pytest.approx(8 / 255)
    assert run.robustness["queries"] == robustness.DEFAULT_QUERIES
