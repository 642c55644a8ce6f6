"""The dashboard in a real (headless) Chromium: sign-in, tenant isolation, thumbnails, filters, pagination, image
details, the audit-history chart, CSV export, the error and empty states, and a screenshot that is checked."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from PIL import Image

from tests.support.dashboard import DashboardApi, sign_in, table_shas


def test_signed_in_tenant_sees_its_flagged_rows_with_thumbnails(
    page, dashboard_api: DashboardApi, tmp_path: Path
) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api)
    expected = dashboard_api.flagged("acme")
    assert table_shas(page) == [image.sha256 for image in expected]
    others = {image.sha256 for image in dashboard_api.images["globex"]}
    assert not others & set(table_shas(page))
    cells = page.locator("#rows tr").evaluate_all(
        "rows => rows.map(row => [...row.cells].slice(1, 7).map(cell => cell.textContent))"
    )
    assert cells == [
        [image.image_url, image.label, f"{image.score:.3f}", "1.000", image.site, image.page_url] for image in expected
    ]
    assert page.locator("#rows td.page-url a").first.get_attribute("href") == expected[0].page_url  # "<b>" stays text
    assert page.locator("#rows b").count() == 0
    page.wait_for_function(
        "() => [...document.querySelectorAll('#rows img')].every(img => img.complete && img.naturalWidth > 0)"
    )
    widths = page.locator("#rows img").evaluate_all("imgs => imgs.map(img => [img.naturalWidth, img.src])")
    assert all(width == 24 and src.startswith("blob:") for width, src in widths)
    assert page.evaluate("() => document.cookie") == ""
    assert dashboard_api.tokens["acme"] not in page.url
    assert page.evaluate("() => sessionStorage.getItem('scanner.apiKey')") == dashboard_api.tokens["acme"]

    page.locator(".run-point").first.wait_for()
    shot = Path(os.environ.get("DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.size[0] == 1280 and image.size[1] >= 600
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, thumbnails, chart: not a blank page
    for selector in ["#flagged", "#filters", "#export", "#rows img >> nth=0", ".chart", "#whoami", "#sign-out"]:
        assert page.locator(selector).is_visible(), selector
    assert not page.locator("#signin").is_visible()
    assert not page.locator("#empty").is_visible()


def test_filters_narrow_the_rows_and_reset_restores_them(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api)
    flagged = dashboard_api.flagged("acme")
    page.get_by_label("Site").fill("shop.example")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n", arg=2)
    assert table_shas(page) == [image.sha256 for image in flagged if image.site == "shop.example"]
    page.get_by_label("Site").fill("")
    page.get_by_label("Minimum score").fill("1.6")
    page.keyboard.press("Enter")  # keyboard submission
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n", arg=2)
    assert table_shas(page) == [image.sha256 for image in flagged if image.score >= 1.6]
    page.get_by_role("button", name="Reset").click()
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n", arg=len(flagged))


def test_empty_state(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api, "globex")
    page.get_by_label("Label").fill("no-such-label")
    page.get_by_role("button", name="Apply filters").click()
    page.locator("#empty").wait_for(state="visible")
    assert page.locator("#rows tr").count() == 0
    assert not page.locator("#load-more").is_visible()


def test_load_more_pages_through_the_cursor(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api, page_size=2)
    expected = [image.sha256 for image in dashboard_api.flagged("acme")]
    assert table_shas(page) == expected[:2]
    page.get_by_role("button", name="Load more").click()
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n", arg=4)
    assert table_shas(page) == expected
    page.get_by_role("button", name="Load more").click()  # a full last page: one more, empty, request
    page.locator("#load-more").wait_for(state="hidden")
    assert table_shas(page) == expected


def test_details_list_the_pages_where_the_image_was_seen(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api)
    image = dashboard_api.flagged("acme")[0]
    page.get_by_role("button", name=f"Details of image {image.sha256[:12]}").click()
    page.locator("#details").wait_for(state="visible")
    assert page.locator("#details-facts").inner_text().count(image.sha256) == 1
    assert page.locator("#details-pages a").evaluate_all("links => links.map(a => a.href)") == [
        page.evaluate("url => new URL(url).href", image.page_url)
    ]


def test_audit_history_chart_has_one_point_per_run(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api)
    points = page.locator("#audit-list .audit .run-point")
    points.first.wait_for()
    assert points.evaluate_all("dots => dots.map(dot => Number(dot.dataset.flagged))") == dashboard_api.run_flagged
    ys = points.evaluate_all("dots => dots.map(dot => Number(dot.getAttribute('cy')))")
    assert ys[0] > ys[1]  # more flagged images are drawn higher
    assert page.locator("#audit-list h3").inner_text().startswith("Shop audit")
    assert page.locator("#audit-list table.runs tbody tr").count() == 2
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, dashboard_api, "globex")
    page.locator("#audits-empty").wait_for(state="visible")  # globex has no audits


def test_csv_export_downloads_the_filtered_rows(page, dashboard_api: DashboardApi, tmp_path: Path) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api)
    page.get_by_label("Label").fill("cat")
    page.get_by_role("button", name="Apply filters").click()
    expected = [image for image in dashboard_api.flagged("acme") if image.label == "cat"]
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n", arg=len(expected))
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export CSV").click()
    download = download_info.value
    assert download.suggested_filename.startswith("flagged-") and download.suggested_filename.endswith(".csv")
    target = tmp_path / "export.csv"
    download.save_as(str(target))
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [row["sha256"] for row in rows] == table_shas(page) == [image.sha256 for image in expected]
    assert [(row["label"], row["site"], row["page_url"]) for row in rows] == [
        (image.label, image.site, image.page_url) for image in expected
    ]


def test_a_bad_key_shows_the_problem_and_is_not_kept(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    page.goto(f"{dashboard_api.api.base}/dashboard")
    page.get_by_label("API key").fill("rsk_not_a_real_key")
    page.get_by_label("API key").press("Enter")
    error = page.get_by_role("alert").filter(has_text="invalid_key")
    error.wait_for(state="visible")
    assert page.locator("#signin-form").is_visible() and not page.locator("#app").is_visible()
    assert page.evaluate("() => sessionStorage.getItem('scanner.apiKey')") is None


def test_a_key_without_reports_read_shows_the_error(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    page.goto(f"{dashboard_api.api.base}/dashboard")
    page.get_by_label("API key").fill(dashboard_api.tokens["scans_only"])
    page.get_by_role("button", name="Sign in").click()
    page.locator("#error").filter(has_text="insufficient_scope").wait_for(state="visible")


def test_the_key_survives_a_reload_and_sign_out_forgets_it(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api)
    page.reload()
    page.locator("#status").filter(has_text="shown").wait_for()
    page.get_by_role("button", name="Sign out").click()
    assert page.locator("#signin-form").is_visible()
    assert page.evaluate("() => sessionStorage.getItem('scanner.apiKey')") is None
