"""The dashboard's fixtures: the API on a real socket with known flagged verdicts for two tenants and an audit
with two runs, and a headless Chromium (Playwright, sync API) to drive the page."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from collections.abc import Iterator

import pytest

from scanner.audits import store
from scanner.db import keys, queries
from scanner.db.models import AuditRun, Sighting
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from scanner.versions import served_versions
from tests.support.api import start_api
from tests.support.dashboard import T0, DashboardApi, Seeded
from tests.support.queries import add_item, record_image, write_verdict
from tests.support.verdicts import verdict_with_score


def png(seed: int, size: int = 24) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (seed * 67 % 256, seed * 131 % 256, seed * 29 % 256))
    ImageDraw.Draw(image).rectangle((4, 4, size - 5, size - 5), fill=(255 - seed * 40 % 256, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _verdict(versions: object, label: str | None, score: float) -> dict:
    return verdict_with_score(versions.model_version, versions.calibration_version, label, score)  # type: ignore[attr-defined]


PLAN = {
    # tenant: (site, label, score) per image, in the order they are seen (one day apart)
    "acme": [
        ("shop.example", "cat", 1.20),
        ("blog.example", "dog", 1.55),
        ("shop.example", "cat", 0.40),  # not flagged
        ("shop.example", "dog", 1.90),
        ("blog.example", "cat", 2.40),
    ],
    "globex": [("globex.example", "fox", 3.10), ("globex.example", "owl", 1.70)],
    # a portrait, say: not one of the model's classes, so no confident class (label null)
    "initech": [("initech.example", None, 2.20), ("initech.example", "ship", 1.30), ("initech.example", "cat", 3.30)],
}


def _seed_images(session, versions, tenant: str, tenant_id: int, offset: int) -> list[Seeded]:  # noqa: ANN001
    seeded = []
    for i, (site, label, score) in enumerate(PLAN[tenant]):
        data = png(offset + i)
        sha256 = hashlib.sha256(data).hexdigest()
        page_url = f"https://{site}/{tenant}/page-{i}?q=<b>{i}</b>"
        scan = queries.new_scan(
            session, tenant_id, "crawl", page_url, versions.model_version, versions.calibration_version
        )
        image = record_image(session, sha256, data, "PNG", 24, 24)
        image_url = f"https://{site}/img-{i}.png"
        add_item(session, scan, 0, image=image, image_url=image_url)
        session.flush()
        for sighting in session.query(Sighting).filter_by(scan_id=scan.id):
            sighting.seen_at = T0 + dt.timedelta(days=offset + i)
        write_verdict(session, image.id, _verdict(versions, label, score))
        seeded.append(Seeded(sha256, data, label, score, site, page_url, score > 1.0, image_url))
    return seeded


def _seed_audit(session, tenant_id: int, flagged_counts: list[int]) -> None:  # noqa: ANN001
    spec = store.AuditSpec(start_url="https://shop.example/", schedule="every 1d", name="Shop audit")
    audit = store.create_audit(session, tenant_id, spec, T0 + dt.timedelta(days=30))
    empty_diff = {"newly_flagged": [], "gone": [], "changed": []}
    for n, flagged in enumerate(flagged_counts):
        run_id = store.claim_run(session, audit.id, "test", "schedule")
        store.finish_run(session, run_id, {"pages": 3, "images": 5, "flagged": flagged}, [], empty_diff)
        session.get_one(AuditRun, run_id).started_at = T0 + dt.timedelta(days=7 * n)


@pytest.fixture(scope="module")
def dashboard_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardApi]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("dashboard"), rate_limit_per_minute=100_000, rate_limit_burst=100_000
    )
    running = start_api(settings, engine=object())  # reads only: the analysis thread never runs
    versions = served_versions(settings)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    seeded = DashboardApi(running, {}, run_flagged=[2, 4])
    with transaction(sessions) as session:
        for offset, tenant in ((0, "acme"), (10, "globex"), (20, "initech")):
            seeded.tokens[tenant] = keys.create_key(session, "dashboard", tenant).token
            tenant_id = keys.get_or_create_tenant(session, tenant).id
            seeded.images[tenant] = _seed_images(session, versions, tenant, tenant_id, offset)
        seeded.tokens["scans_only"] = keys.create_key(session, "writer", "acme", scopes=("scans:write",)).token
        _seed_audit(session, keys.get_or_create_tenant(session, "acme").id, seeded.run_flagged)
    yield seeded
    running.stop()


# --- the browser ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")  # not session: sync Playwright keeps an event loop running while it lives
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    from scanner.crawl import find_chromium

    executable = find_chromium(None, os.environ, None)
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        yield launched
        launched.close()


@pytest.fixture
def page(browser) -> Iterator[object]:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    yield opened
    context.close()
