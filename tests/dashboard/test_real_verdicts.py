"""The dashboard on verdicts of the shipped model and detector (not seeded ones): ordinary photos of the
web-image test split and CIFAR-10 images, some attacked, go through the API; the dashboard lists exactly the
flagged ones, and no ordinary photo is among them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner.settings import Settings
from tests.support.api import RunningApi, start_api, upload
from tests.support.extension import api_settings, build_site_images, http, wait_scan


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory, web_set: Path) -> Iterator[tuple[RunningApi, str, dict, set]]:
    from worker.engine import load_engine

    settings = Settings()
    engine = load_engine(str(settings.robust_bundle), str(settings.standard_bundle), threads=1)
    img_dir, clean_photos = build_site_images(tmp_path_factory.mktemp("site"), web_set)
    running = start_api(api_settings(tmp_path_factory.mktemp("api")), engine)
    key = running.new_key("dashboard", "lab")
    files = sorted(path.name for path in img_dir.iterdir() if path.is_file())
    reply = http("POST", f"{running.base}/v1/scans", key, data=upload(*[(img_dir / f).read_bytes() for f in files]))
    assert reply.status in (201, 202), reply.body
    items = sorted(wait_scan(running, key, reply.json()["id"])["items"], key=lambda item: item["position"])
    by_file = {name: item for name, item in zip(files, items, strict=True)}
    yield running, key, by_file, set(clean_photos)
    running.stop()


def test_the_dashboard_lists_the_flagged_images_and_no_ordinary_photo(page: Any, judged: tuple) -> None:
    running, key, by_file, clean_photos = judged
    assert all(item["state"] == "done" for item in by_file.values())
    flagged = {item["sha256"] for item in by_file.values() if item["verdict"]["flagged"]}
    photos = {by_file[name]["sha256"] for name in clean_photos}
    assert flagged, "the shipped detector flagged none of the attacked images"
    assert not flagged & photos, "an ordinary photo was flagged"

    page.goto(f"{running.base}/dashboard")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#status").filter(has_text="shown").wait_for()
    rows = page.locator("#rows tr").evaluate_all("rows => rows.map(row => row.dataset.sha256)")
    assert set(rows) == flagged and len(rows) == len(flagged)
    assert not photos & set(rows)
