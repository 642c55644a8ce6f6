"""Audits crawl on a tenant's behalf, from inside our network: their start URLs and every request of their runs
follow the fetcher's address and port rules (no SCANNER_FETCH_ALLOW_PRIVATE here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from scanner.audits import runner, store
from scanner.db import keys, migrate
from scanner.db.models import utcnow
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from tests.support.api import http, start_api
from tests.support.images import crawlable_png
from tests.support.servers import Served


class RecordingSite:
    """A page with an image that records every request it receives."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def app(self) -> web.Application:
        async def any_path(request: web.Request) -> web.Response:
            self.paths.append(request.path)
            if request.path.endswith(".png"):
                return web.Response(body=crawlable_png(9), content_type="image/png")
            return web.Response(text='<img src="/a.png" width="64" height="64">', content_type="text/html")

        app = web.Application()
        app.router.add_get("/{tail:.*}", any_path)
        return app


@pytest.fixture
def recording_site() -> Iterator[tuple[RecordingSite, str]]:
    site = RecordingSite()
    server = Served(site.app())
    yield site, server.url
    server.stop()


@pytest.fixture
def strict_settings(tmp_path: Path) -> Settings:
    """The defaults of a server: no private addresses, ports 80 and 443 only."""
    config = Settings(data_dir=tmp_path / "data", engine_threads=1)
    migrate.upgrade(config.db_url)
    return config


REFUSED = {
    "http://169.254.169.254/latest/meta-data/": "blocked_address",
    "http://10.0.0.1/": "blocked_address",
    "http://0.0.0.0:5432/": "blocked_address",
    "http://2130706433/": "blocked_address",
    "http://localhost/": "blocked_address",  # a name: refused for what it resolves to
    "http://example.com:6379/": "blocked_port",
}


def test_creating_an_audit_refuses_what_the_fetcher_refuses(
    strict_settings: Settings, recording_site: tuple[RecordingSite, str]
) -> None:
    site, site_url = recording_site
    api = start_api(strict_settings)
    try:
        key = api.new_key("a", "acme")
        for start_url, code in {**REFUSED, site_url + "/": "blocked_address"}.items():
            reply = http("POST", api.base + "/v1/audits", key, json={"start_url": start_url, "every": "6h"})
            assert reply.status == 422, (start_url, reply.body)
            problem = reply.json()
            assert problem["code"] == code, (start_url, problem)
            if "localhost" in start_url:  # what a name resolves to is not told
                assert "127.0.0.1" not in problem["detail"] and "::1" not in problem["detail"], problem
        listed = http("GET", api.base + "/v1/audits", key).json()
        assert listed["items"] == []
    finally:
        api.stop()
    assert site.paths == []


def test_creating_an_audit_refuses_a_webhook_the_fetcher_refuses(
    strict_settings: Settings, recording_site: tuple[RecordingSite, str]
) -> None:
    """Delivery refuses such webhooks every time; creation says so at once, with the fetcher's codes."""
    site, site_url = recording_site
    refused = {
        "http://127.0.0.1/hook": "blocked_address",
        "http://0.0.0.0/hook": "blocked_address",
        "http://[::1]/hook": "blocked_address",
        "http://localhost/hook": "blocked_address",  # a name: refused for what it resolves to
        "http://example.com:6379/hook": "blocked_port",
        site_url + "/hook": "blocked_address",  # a live loopback listener: not even reached
    }
    api = start_api(strict_settings)
    try:
        key = api.new_key("a", "acme")
        for webhook_url, code in refused.items():
            body = {"start_url": "https://1.1.1.1/", "every": "6h", "webhook_url": webhook_url}
            reply = http("POST", api.base + "/v1/audits", key, json={**body, "webhook_secret": "s3cret-s3cret"})
            assert reply.status == 422, (webhook_url, reply.body)
            assert reply.json()["code"] == code, (webhook_url, reply.json())
            assert reply.json()["detail"].startswith("webhook_url: ")
        assert http("GET", api.base + "/v1/audits", key).json()["items"] == []
    finally:
        api.stop()
    assert site.paths == []


def test_public_ipv6_literals_may_be_audited_and_private_ones_are_refused(strict_settings: Settings) -> None:
    cases = {
        "http://[2606:4700:4700::1111]/": 201,
        "https://[2001:4860:4860::8888]:443/shop": 201,
        "http://[::1]/": "blocked_address",
        "http://[fd12:3456::1]/": "blocked_address",
        "http://[fe80::1]/": "blocked_address",
        "http://[::ffff:127.0.0.1]/": "blocked_address",
        "http://[::]/": "blocked_address",
        "http://[2606:4700:4700::1111]:6379/": "blocked_port",
    }
    api = start_api(strict_settings)
    try:
        key = api.new_key("a", "acme")
        for start_url, expected in cases.items():
            reply = http("POST", api.base + "/v1/audits", key, json={"start_url": start_url, "every": "6h"})
            if expected == 201:
                assert reply.status == 201, (start_url, reply.body)
                assert reply.json()["start_url"] == start_url
            else:
                assert (reply.status, reply.json()["code"]) == (422, expected), (start_url, reply.body)
        listed = http("GET", api.base + "/v1/audits", key).json()["items"]
        assert sorted(audit["start_url"] for audit in listed) == sorted(u for u, e in cases.items() if e == 201)
    finally:
        api.stop()


@pytest.mark.browser
def test_a_run_sends_no_request_to_a_private_site(
    strict_settings: Settings, recording_site: tuple[RecordingSite, str]
) -> None:
    """A start URL that passed creation (say its name resolved to a public address then, to 127.0.0.1 now):
    the run itself must not reach the site: not robots.txt, the sitemap, the page, its images or favicon."""
    site, site_url = recording_site
    engine = make_engine(strict_settings.db_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            tenant_id = keys.get_or_create_tenant(session, "acme").id
            spec = store.AuditSpec(start_url=site_url + "/", schedule="every 6h")
            audit_id = store.create_audit(session, tenant_id, spec, utcnow()).id
    finally:
        engine.dispose()
    result: Any = runner.run_now(strict_settings, audit_id)
    assert result.status == "failed"
    assert site.paths == []
