"""Issue 37, item 5, in headless Chromium at 1280 px: the "Details" buttons and host names do not wrap, and a
false-flag report can be undone (the API withdraws it; the row is unmarked, also after a reload)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.dashboard import DashboardApi, sign_in

# How many line boxes each element's text takes.
ONE_LINE = (
    "els => els.map(el => { const r = document.createRange(); r.selectNodeContents(el); "
    "return new Set([...r.getClientRects()].map(rect => Math.round(rect.top))).size; })"
)


def test_details_and_host_names_stay_on_one_line_at_1280_px(page, dashboard_api: DashboardApi, tmp_path: Path) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api, "acme")
    assert page.viewport_size["width"] == 1280
    buttons = page.locator("#rows .row-details")
    assert buttons.count() > 0
    assert set(buttons.evaluate_all(ONE_LINE)) == {1}
    assert set(page.locator("#rows td.site").evaluate_all(ONE_LINE)) == {1}
    page.screenshot(path=str(Path(os.environ.get("DASHBOARD_SCREENSHOT_1280", tmp_path / "wide.png"))), full_page=True)


def test_a_false_flag_can_be_undone(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api, "globex")
    target = dashboard_api.flagged("globex")[0]
    row = page.locator(f"#rows tr[data-sha256='{target.sha256}']")
    page.get_by_role("button", name=f"Details of image {target.sha256[:12]}").click()
    page.get_by_role("button", name="This is a false flag").click()
    page.locator("#details-feedback").filter(has_text="Confirmed false flag").wait_for()
    page.get_by_role("button", name="Undo: not a false flag").click()
    page.locator("#details-feedback").filter(has_text="Report withdrawn").wait_for()
    assert page.get_by_role("button", name="This is a false flag").is_enabled()
    assert "confirmed false flag" not in row.inner_text() and "false-flag" not in (row.get_attribute("class") or "")
    image = page.evaluate(  # the API, asked from the page (the sync browser holds this thread's event loop)
        "([url, key]) => fetch(url, {headers: {Authorization: `Bearer ${key}`}}).then(r => r.json())",
        [f"{dashboard_api.api.base}/v1/images/{target.sha256}", dashboard_api.tokens["globex"]],
    )
    assert image["feedback"].get("false_flag", 0) == 0
    page.reload()
    page.locator("#status").filter(has_text="shown").wait_for()
    assert page.locator("#rows tr.false-flag").count() == 0
