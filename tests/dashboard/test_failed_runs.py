"""Issue 37, item 1: the dashboard draws a failed audit run as a failure with its reason, not as "0 flagged"."""

from __future__ import annotations

import datetime as dt

from scanner.audits import store
from scanner.db import keys
from scanner.db.models import AuditRun
from scanner.db.session import make_engine, make_sessionmaker, transaction
from tests.support.dashboard import T0, DashboardApi, sign_in

EMPTY_DIFF = {"newly_flagged": [], "gone": [], "changed": []}


def _seed_runs(dashboard_api: DashboardApi) -> None:
    """initech's audit: done (3 flagged), failed (blocked_address), done (1 flagged)."""
    engine = make_engine(dashboard_api.api.settings.db_url)
    with transaction(make_sessionmaker(engine)) as session:
        tenant_id = keys.get_or_create_tenant(session, "initech").id
        spec = store.AuditSpec(start_url="https://initech.example/", schedule="every 1d", name="Staging")
        audit = store.create_audit(session, tenant_id, spec, T0 + dt.timedelta(days=30))
        for n, flagged in enumerate([3, None, 1]):
            run_id = store.claim_run(session, audit.id, "test", "schedule")
            if flagged is None:
                store.fail_run(session, run_id, "http://10.0.0.5/ is refused: not allowed", "blocked_address")
            else:
                store.finish_run(session, run_id, {"pages": 2, "images": 4, "flagged": flagged}, [], EMPTY_DIFF)
            session.get_one(AuditRun, run_id).started_at = T0 + dt.timedelta(days=n)
    engine.dispose()


def test_a_failed_run_is_drawn_as_a_failure_with_its_reason(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    _seed_runs(dashboard_api)
    sign_in(page, dashboard_api, "initech")
    audit = page.locator("#audit-list .audit").filter(has_text="Staging")
    audit.locator(".run-failed").wait_for()
    assert audit.locator(".run-point").evaluate_all("d => d.map(dot => Number(dot.dataset.flagged))") == [3, 1]
    failed = audit.locator(".run-failed")
    assert failed.count() == 1 and failed.get_attribute("data-reason") == "blocked_address"
    assert "failed (blocked_address)" in failed.locator("title").text_content()
    line = audit.locator("polyline").get_attribute("points").split()
    assert len(line) == 2  # the line joins the counted runs only: no dip to 0 for the failure
    rows = audit.locator("table.runs tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert rows[1][1] == "failed (blocked_address)" and rows[1][4] == "—"
    assert "is refused" in rows[1][6]
    assert "failed (blocked_address)" in audit.locator("svg.chart").get_attribute("aria-label")
