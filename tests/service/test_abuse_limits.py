"""Limits against abuse: failed authentications are rate limited per client address (key guessing meets 429),
and audits have a minimum interval and a per-tenant cap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner.settings import Settings
from tests.support.api import RunningApi, http, start_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    settings = Settings(
        data_dir=tmp_path / "data",
        auth_failures_per_minute=1,
        auth_failures_burst=5,
        audit_min_interval_s=3600,
        audits_per_tenant=2,
        fetch_allow_private=True,
    )
    running = start_api(settings)
    yield running
    running.stop()


def test_wrong_keys_from_one_address_meet_429(api: RunningApi) -> None:
    good = api.new_key("good", "acme")
    statuses = [http("GET", f"{api.base}/v1/me", "rsk_nope_wrong").status for _ in range(12)]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    refused = http("GET", f"{api.base}/v1/me")  # no key at all counts as a failure too
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert http("GET", f"{api.base}/v1/me", good).status == 200  # a valid key is not locked out


def test_audits_have_a_minimum_interval_and_a_cap_per_tenant(api: RunningApi) -> None:
    key, other = api.new_key("a", "acme"), api.new_key("b", "globex")
    base = api.base + "/v1/audits"
    for schedule in ({"every": "30s"}, {"every": "59m"}, {"cron": "*/5 * * * *"}):
        reply = http("POST", base, key, json={"start_url": "http://127.0.0.1/", **schedule})
        assert reply.status == 422 and reply.json()["code"] == "schedule_too_frequent", (schedule, reply.body)
    for _ in range(2):
        assert http("POST", base, key, json={"start_url": "http://127.0.0.1/", "every": "1h"}).status == 201
    third = http("POST", base, key, json={"start_url": "http://127.0.0.1/", "cron": "0 3 * * *"})
    assert third.status == 403 and third.json()["code"] == "quota_exceeded"
    assert http("POST", base, other, json={"start_url": "http://127.0.0.1/", "every": "6h"}).status == 201
