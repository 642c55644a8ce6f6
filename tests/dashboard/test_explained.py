"""Issue 14, items 5-7 (and the UI half of issue 12) in the dashboard, in headless Chromium: details that explain
a verdict (large preview, image URL, threshold, per-detector scores, what the numbers mean), "no confident class"
for a null label, the false-flag action that marks the row and stays after a reload (and the filter for it), a
sort by score, a phone-width page that does not overflow, a chart axis with times, and a root page that points to
the dashboard."""

from __future__ import annotations

from tests.support.dashboard import DashboardApi, sign_in, table_shas


def test_details_explain_the_verdict(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api, "initech")
    image = next(i for i in dashboard_api.flagged("initech") if i.label is None)
    row = page.locator(f"#rows tr[data-sha256='{image.sha256}']")
    assert row.locator("td.label").inner_text() == "no confident class"
    row.get_by_role("button", name="Details").click()
    page.locator("#details").wait_for(state="visible")
    facts = page.locator("#details-facts").inner_text()
    assert "Label\nno confident class" in facts and "Threshold\n1.000" in facts and f"Score\n{image.score:.3f}" in facts
    assert page.locator("#details-facts a").first.get_attribute("href") == image.image_url
    assert page.locator("#details-scores li").all_inner_texts() == [f"kl_rs: {image.score:.3f}"]
    assert "perturbation detectors find this image unlike ordinary images" in page.locator("#details").inner_text()
    page.wait_for_function("() => document.querySelector('#details-preview').naturalWidth > 0")
    assert page.locator("#details-preview").bounding_box()["width"] >= 200  # a preview, not a thumbnail


def test_a_false_flag_from_the_dashboard_is_marked_filterable_and_kept(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api, "initech")
    flagged = dashboard_api.flagged("initech")
    target = flagged[0]
    page.get_by_role("button", name=f"Details of image {target.sha256[:12]}").click()
    page.get_by_role("button", name="This is a false flag").click()
    page.locator("#details-feedback").filter(has_text="Confirmed false flag").wait_for()
    assert page.get_by_role("button", name="This is a false flag").is_disabled()
    assert "confirmed false flag" in page.locator(f"#rows tr[data-sha256='{target.sha256}']").inner_text()

    page.reload()  # stored by the API: the mark comes back with the report
    page.locator("#status").filter(has_text="shown").wait_for()
    marked = page.locator("#rows tr.false-flag").evaluate_all("rows => rows.map(row => row.dataset.sha256)")
    assert marked == [target.sha256]
    page.get_by_label("False flags").select_option(label="Hide")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n", arg=len(flagged) - 1)
    assert target.sha256 not in table_shas(page)
    page.get_by_label("False flags").select_option(label="Only these")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n", arg=1)
    assert table_shas(page) == [target.sha256]


def test_sort_by_score(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api, "initech")
    flagged = dashboard_api.flagged("initech")
    page.get_by_label("Sort").select_option(label="Highest score first")
    by_score = [image.sha256 for image in sorted(flagged, key=lambda image: -image.score)]
    assert by_score != [image.sha256 for image in flagged]  # the two orders differ in this data
    assert table_shas(page) == by_score
    page.get_by_label("Sort").select_option(label="Newest sighting first")
    assert table_shas(page) == [image.sha256 for image in flagged]


def test_label_none_filters_the_images_without_a_confident_class(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    sign_in(page, dashboard_api, "initech")
    page.get_by_label("Label").fill("none")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length === n", arg=1)
    assert table_shas(page) == [i.sha256 for i in dashboard_api.flagged("initech") if i.label is None]


def test_phone_width_does_not_overflow(page, dashboard_api: DashboardApi) -> None:  # noqa: ANN001
    page.set_viewport_size({"width": 375, "height": 800})
    sign_in(page, dashboard_api)
    page.locator(".run-point").first.wait_for()
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone"
    assert page.locator("#rows tr").first.is_visible() and page.get_by_role("button", name="Apply filters").is_visible()


def test_the_chart_axis_shows_times_and_the_root_page_links_to_the_dashboard(
    page, dashboard_api: DashboardApi  # noqa: ANN001
) -> None:
    sign_in(page, dashboard_api)
    page.locator(".run-point").first.wait_for()
    axis = page.locator(".chart text.time").evaluate_all("labels => labels.map(label => label.textContent)")
    assert len(axis) == 2 and all(":" in text for text in axis), axis  # a date alone: runs minutes apart look alike
    page.goto(dashboard_api.api.base + "/")
    page.get_by_role("link", name="The reports dashboard").click()
    page.wait_for_url(dashboard_api.api.base + "/dashboard")
    # The tab still holds its key: the dashboard opens signed in.
    page.locator("#status").filter(has_text="shown").wait_for()
