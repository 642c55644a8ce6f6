"""Issue 37, item 5: the API's undo of a false-flag report, tenant-scoped (no browser in this module: the sync
Playwright loop would refuse the test's own requests)."""

from __future__ import annotations

from tests.support.api import http
from tests.support.dashboard import DashboardApi


def test_the_undo_api_is_tenant_scoped(dashboard_api: DashboardApi) -> None:
    acme, globex = dashboard_api.tokens["acme"], dashboard_api.tokens["globex"]
    theirs = dashboard_api.flagged("globex")[0].sha256
    base = dashboard_api.api.base
    assert http("POST", f"{base}/v1/images/{theirs}/feedback", globex, json={"kind": "false_flag"}).status == 201
    assert http("DELETE", f"{base}/v1/images/{theirs}/feedback/false_flag", acme).status == 404  # not acme's image
    assert http("GET", f"{base}/v1/images/{theirs}", globex).json()["feedback"]["false_flag"] == 1
    assert http("DELETE", f"{base}/v1/images/{theirs}/feedback/nonsense", globex).status == 404
    assert http("DELETE", f"{base}/v1/images/{theirs}/feedback/false_flag", globex).status == 204
    assert http("GET", f"{base}/v1/images/{theirs}", globex).json()["feedback"].get("false_flag", 0) == 0
