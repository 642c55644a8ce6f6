"""GET /v1/images/{sha256}/raw (the dashboard's thumbnails) and the dashboard's static files, over a real socket."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import requests

from scanner.api.dashboard import PAGE_CSP
from tests.support.dashboard import DashboardApi


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def http(method: str, url: str, key: str | None = None) -> Reply:
    """One request (with requests: the session's Playwright keeps an event loop in this thread)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.request(method, url, headers=headers, timeout=30)
    return Reply(response.status_code, response.headers, response.content)


def _raw(dashboard_api: DashboardApi, sha256: str, token: str | None):  # noqa: ANN202
    return http("GET", f"{dashboard_api.api.base}/v1/images/{sha256}/raw", token)


def test_raw_returns_the_stored_bytes_with_safe_headers(dashboard_api: DashboardApi) -> None:
    image = dashboard_api.images["acme"][0]
    reply = _raw(dashboard_api, image.sha256.upper(), dashboard_api.tokens["acme"])
    assert reply.status == 200 and reply.body == image.data
    assert reply.headers["Content-Type"] == "image/png"
    assert reply.headers["Cache-Control"] == "private, max-age=3600"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


def test_raw_is_not_found_across_tenants(dashboard_api: DashboardApi) -> None:
    theirs = dashboard_api.images["globex"][0].sha256
    for sha256, token in [
        (theirs, dashboard_api.tokens["acme"]),  # exists, but acme never saw it
        (dashboard_api.images["acme"][0].sha256, dashboard_api.tokens["globex"]),
        ("0" * 64, dashboard_api.tokens["acme"]),
        ("not-a-sha", dashboard_api.tokens["acme"]),
    ]:
        reply = _raw(dashboard_api, sha256, token)
        assert (reply.status, reply.json()["code"]) == (404, "image_not_found"), sha256
        assert theirs not in reply.body.decode() or sha256 == theirs


def test_raw_needs_a_key_with_reports_read(dashboard_api: DashboardApi) -> None:
    sha256 = dashboard_api.images["acme"][0].sha256
    assert _raw(dashboard_api, sha256, None).json()["code"] == "missing_key"
    reply = _raw(dashboard_api, sha256, dashboard_api.tokens["scans_only"])
    assert (reply.status, reply.json()["code"]) == (403, "insufficient_scope")


def test_page_and_assets_are_served_without_a_key_under_a_strict_policy(dashboard_api: DashboardApi) -> None:
    base = dashboard_api.api.base
    for path, media_type in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ]:
        reply = http("GET", base + path)
        assert reply.status == 200, path
        assert reply.headers["Content-Type"].startswith(media_type), path
        assert reply.headers["Content-Security-Policy"] == PAGE_CSP
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
    html = http("GET", base + "/dashboard").body.decode()
    assert "<script>" not in html and '<script src="/dashboard/dashboard.js"' in html  # no inline script
    assert "script-src 'self'" in PAGE_CSP and "img-src 'self' blob: data:" in PAGE_CSP
    assert "connect-src 'self'" in PAGE_CSP and "unsafe-inline" not in PAGE_CSP
    assert http("GET", base + "/dashboard/other.js").status == 404
    script = http("GET", base + "/dashboard/dashboard.js").body.decode()
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", script)  # textContent only
    assert "localStorage" not in script and "document.cookie" not in script  # the key stays in sessionStorage


def test_raw_and_page_responses_conform_to_the_document(dashboard_api: DashboardApi) -> None:
    """What schemathesis's random sha256s never reach: a 200 with real bytes, validated against openapi.json."""
    import schemathesis

    from scanner.api import openapi

    schema = schemathesis.openapi.from_path(openapi.OPENAPI_PATH)
    image = dashboard_api.images["acme"][1]
    headers = {"Authorization": f"Bearer {dashboard_api.tokens['acme']}"}
    base = dashboard_api.api.base
    response = requests.get(f"{base}/v1/images/{image.sha256}/raw", headers=headers, timeout=30)
    schema["/v1/images/{sha256}/raw"]["GET"].validate_response(response)
    for path in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css"):
        schema[path]["GET"].validate_response(requests.get(base + path, timeout=30))
