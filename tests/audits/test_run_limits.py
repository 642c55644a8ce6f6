"""Audit runs through the API of a running (embedded) server: manual triggers are rate-limited per audit, and
runs beyond the tenant's or the process's limit wait ``queued`` instead of all crawling at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from scanner.settings import Settings
from tests.support.api import RunningApi, http, start_api
from tests.support.images import crawlable_png
from tests.support.servers import Served
from tests.support.waiting import wait_for


class HeldSite:
    """A page that is not answered until the test releases it: a run stays running as long as the test needs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.server = Served(self.app())
        self.url = self.server.url + "/"

    def app(self) -> web.Application:
        async def index(_: web.Request) -> web.Response:
            import asyncio

            await asyncio.to_thread(self.release.wait, 120)
            return web.Response(
                text='<html><body><img src="/a.png" width="64" height="64"></body></html>', content_type="text/html"
            )

        async def image(_: web.Request) -> web.Response:
            return web.Response(body=crawlable_png(7), content_type="image/png")

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/a.png", image)
        return app


@pytest.fixture
def held_site() -> Iterator[HeldSite]:
    site = HeldSite()
    yield site
    site.release.set()
    site.server.stop()


def audit_api(settings: Settings, **limits: int) -> RunningApi:
    return start_api(settings.model_copy(update=limits))


def new_audit(api: RunningApi, key: str, start_url: str) -> str:
    created = http("POST", f"{api.base}/v1/audits", key, json={"start_url": start_url, "every": "1d", "max_pages": 1})
    assert created.status == 201, created.body
    return f"{api.base}/v1/audits/{created.json()['id']}/runs"


def statuses(api: RunningApi, key: str, runs: list[str]) -> list[str]:
    return [http("GET", url, key).json()["items"][0]["status"] for url in runs]


@pytest.mark.browser
def test_manual_triggers_are_rate_limited(settings: Settings, held_site: HeldSite) -> None:
    held_site.release.set()  # the page answers at once: each run ends quickly
    api = audit_api(settings, audit_manual_runs_per_hour=1)
    try:
        key = api.new_key()
        runs = new_audit(api, key, held_site.url)
        assert http("POST", runs, key).status == 202
        wait_for(lambda: statuses(api, key, [runs])[0] in ("done", "failed"), 180, 0.2, "the first run to end")
        again = http("POST", runs, key)
        assert again.status == 429 and again.json()["code"] == "too_many_runs"
        assert int(again.headers["Retry-After"]) > 0
        assert len(http("GET", runs, key).json()["items"]) == 1  # the refused trigger started nothing
    finally:
        api.stop()


@pytest.mark.parametrize(
    ("limits", "tenants"),
    [
        ({"audit_runs_per_tenant": 1, "audit_runs_per_process": 5}, ["acme", "acme", "acme"]),
        ({"audit_runs_per_tenant": 5, "audit_runs_per_process": 1}, ["acme", "globex", "initech"]),
    ],
    ids=["per-tenant", "per-process"],
)
@pytest.mark.browser
def test_runs_beyond_the_limit_wait_queued(
    settings: Settings, held_site: HeldSite, limits: dict[str, int], tenants: list[str]
) -> None:
    api = audit_api(settings, **limits)
    try:
        keys = [api.new_key(f"k{i}", tenant) for i, tenant in enumerate(tenants)]
        runs = [new_audit(api, key, held_site.url) for key in keys]
        assert [http("POST", url, key).status for url, key in zip(runs, keys, strict=True)] == [202] * 3

        def seen() -> list[str]:
            return sorted(s for url, key in zip(runs, keys, strict=True) for s in statuses(api, key, [url]))

        # While the page is held, one run crawls and the other two wait.
        assert wait_for(lambda: (s := seen()) == ["queued", "queued", "running"] and s, 120, 0.2, "one running")
        held_site.release.set()
        observed: list[list[str]] = []

        def all_ended() -> bool:
            observed.append(seen())
            return all(s in ("done", "failed") for s in observed[-1])

        wait_for(all_ended, 300, 0.2, "every run to end")
        assert all(states.count("running") <= 1 for states in observed)  # never two at once
    finally:
        api.stop()
