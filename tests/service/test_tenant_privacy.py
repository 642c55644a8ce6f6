"""What one tenant can learn about another: nothing through a known verdict (no 201, no earlier time) and
nothing through another tenant's scan or its event stream."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from scanner.settings import Settings
from tests.support.api import RunningApi, http, start_api, upload
from tests.support.images import random_png
from tests.support.waiting import wait_for
from worker.engine import load_engine


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("privacy"), engine_threads=1)
    engine = load_engine(str(settings.robust_bundle), str(settings.standard_bundle), threads=1)
    running = start_api(settings, engine)
    yield running
    running.stop()


def _done(api: RunningApi, key: str, scan_id: str) -> dict:
    def finished() -> dict | None:
        document = http("GET", f"{api.base}/v1/scans/{scan_id}", key).json()
        return document if document["status"] == "done" else None

    return wait_for(finished, 60, 0.1, f"scan {scan_id}")


def test_a_verdict_caused_by_another_tenant_looks_like_a_new_analysis(api: RunningApi) -> None:
    acme, globex = api.new_key("a", "acme"), api.new_key("g", "globex")
    image = random_png(4242)
    first = http("POST", f"{api.base}/v1/scans", acme, data=upload(image))
    assert first.status == 202
    acme_done = _done(api, acme, first.json()["id"])

    theirs = http("POST", f"{api.base}/v1/scans", globex, data=upload(image))
    assert theirs.status == 202, "a 201 would tell globex that someone submitted these bytes before"
    assert theirs.json()["status"] == "queued" and theirs.json()["items"][0]["verdict"] is None
    globex_done = _done(api, globex, theirs.json()["id"])
    verdict = globex_done["items"][0]["verdict"]
    assert dt.datetime.fromisoformat(verdict["analysed_at"]) >= dt.datetime.fromisoformat(globex_done["created_at"])
    assert verdict["label"] == acme_done["items"][0]["verdict"]["label"]  # the same verdict, told per tenant
    sha = globex_done["items"][0]["sha256"]
    image_document = http("GET", f"{api.base}/v1/images/{sha}", globex).json()
    assert all(v["analysed_at"] >= image_document["first_seen"] for v in image_document["verdicts"])

    again = http("POST", f"{api.base}/v1/scans", acme, data=upload(image))
    assert again.status == 201  # a tenant's own known image is still answered at once
    assert again.json()["items"][0]["verdict"] == acme_done["items"][0]["verdict"]


def test_another_tenants_scan_and_its_events_are_not_found(api: RunningApi) -> None:
    acme, globex = api.new_key("a2", "acme"), api.new_key("g2", "globex")
    scan_id = http("POST", f"{api.base}/v1/scans", acme, data=upload(random_png(4343))).json()["id"]
    for path in (f"/v1/scans/{scan_id}", f"/v1/scans/{scan_id}/events"):
        reply = http("GET", api.base + path, globex)
        assert reply.status == 404 and reply.json()["code"] == "scan_not_found", (path, reply.body)
    events = http("GET", f"{api.base}/v1/scans/{scan_id}/events", acme)
    assert events.status == 200 and b"event: done" in events.body
