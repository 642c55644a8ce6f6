"""The Manifest V3 extension in real Chromium against the real API: badges on flagged images only, images
inserted after load, no icons and nothing off-screen sent, options that persist, pause and per-site switches
that keep everything at home, the false-flag button, the context menu, an API that goes away, the linter and
the store package.  Fixtures: conftest.py (one browser, one API, one page server for the module)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.support.extension import (
    BADGES_JS,
    EXTENSION,
    IMAGES_JS,
    Api,
    Browser,
    Site,
    badges_by_image,
    fill_options,
    http,
    wait_quiet,
    wait_settled,
)
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

# Hostile page CSS: none of it may reach the badges (they live in shadow roots).
HOSTILE_CSS = "button { display: none !important; } * { font-size: 3px !important; color: transparent !important; }"


def gallery_html(site: Site, tag: str) -> str:
    figures = "".join(
        f'<img src="/img/{image.file}?{tag}" width="128" height="128" alt="product {i}">'
        for i, image in enumerate(site.images)
    )
    icon = site.flagged[0].file  # a flagged picture, but shown as a 16 px icon: never sent
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Gallery {tag}</title>"
        f"<style>{HOSTILE_CSS} .grid {{ display: flex; flex-wrap: wrap; gap: 8px; }}</style></head><body>"
        f"<h1>Gallery</h1><p><img src='/img/{icon}?icon-{tag}' width='16' height='16' alt=''> Shop</p>"
        f"<div class='grid'>{figures}</div>"
        f"<div style='height: 3000px'></div>"
        f"<img id='below' src='/img/{site.flagged[-1].file}?below-{tag}' width='128' height='128' alt=''>"
        f"</body></html>"
    )


def open_gallery(browser: Browser, site: Site, tag: str) -> tuple[Page, int]:
    site.server.pages[f"{tag}.html"] = gallery_html(site, tag)
    page = browser.context.new_page()
    url = site.url(f"{tag}.html")
    page.goto(url)
    return page, browser.tab_id(url)


def wait_badges(page: Page, count: int, what: str = "badges") -> dict[str, dict]:
    return wait_for(
        lambda: (found := badges_by_image(page)) is not None and len(found) == count and found, 10, what=what
    )


@pytest.fixture(scope="module")
def gallery(configured: Browser, site: Site, api: Api) -> tuple[Page, int]:
    page, tab_id = open_gallery(configured, site, "gallery")
    wait_settled(configured, tab_id, len(site.images))
    return page, tab_id


def shown(label: str | None) -> str:
    """A verdict's label as the extension words it: a null label is "no confident class" (the domain gate)."""
    return label or "no confident class"


def test_badges_appear_on_flagged_images_only(
    configured: Browser, site: Site, gallery: tuple[Page, int], api: Api
) -> None:
    page, tab_id = gallery
    summary = configured.summary(tab_id)
    assert summary["scanned"] == len(site.images) and summary["errors"] == 0, summary
    assert summary["flagged"] == len(site.flagged)
    placed = wait_badges(page, len(site.flagged))
    assert set(placed) == {f"/img/{image.file}?gallery" for image in site.flagged}
    for image in site.flagged:
        badge = placed[f"/img/{image.file}?gallery"]
        assert badge["aria"].startswith(f"Possibly adversarial image: label {shown(image.label)}, score ")
        assert badge["w"] >= 20, "the page's `button { display: none }` reached into the shadow root"
        assert f"Label{shown(image.label)}" in badge["details"] and "Threshold" in badge["details"]
        assert "Why: the detector scores" in badge["details"] and "This is a false flag" in badge["details"]
    # The images were new to the API: it answered 202 and the service worker followed the scan.
    assert api.requests("GET", "/v1/scans/{scan_id}") > 0
    # Clean images are left exactly as the page made them.
    for img in page.evaluate(IMAGES_JS):
        assert "robust" not in img["html"] and "data-" not in img["html"], img["html"]


def test_ordinary_photos_as_served_get_no_badge(site: Site, gallery: tuple[Page, int]) -> None:
    """Photos of the web-image test split (wallpaper crops, photo stamps; JPEG, PNG or WebP at their own size),
    never used to fit anything, are judged clean by the shipped model and detector, so the page shows no badge
    on them; the attacked photos beside them are judged like any other image."""
    page, _tab_id = gallery
    assert site.ordinary_photos, "the site holds no ordinary photo"
    flagged_photos = [image.file for image in site.ordinary_photos if image.flagged]
    assert not flagged_photos, f"ordinary photos flagged: {flagged_photos}"
    placed = wait_badges(page, len(site.flagged))
    assert not {f"/img/{image.file}?gallery" for image in site.ordinary_photos} & set(placed)


def test_badges_follow_their_image_when_the_page_scrolls_and_resizes(gallery: tuple[Page, int], site: Site) -> None:
    page, _ = gallery
    before = {img["src"]: (img["left"], img["top"]) for img in page.evaluate(IMAGES_JS)}
    page.set_viewport_size({"width": 700, "height": 600})  # the grid wraps: images move
    page.mouse.wheel(0, 90)
    page.wait_for_function("window.scrollY > 0")
    after = {img["src"]: (img["left"], img["top"]) for img in page.evaluate(IMAGES_JS)}
    assert {after[src][1] - before[src][1] for src in before} != {-90}, "no image moved but by the scroll"
    wait_badges(page, len(site.flagged), "badges on their images again")
    page.set_viewport_size({"width": 1280, "height": 720})
    page.evaluate("window.scrollTo(0, 0)")


def test_an_image_inserted_after_load_is_scanned_and_badged_when_flagged(
    configured: Browser, site: Site, gallery: tuple[Page, int]
) -> None:
    page, tab_id = gallery
    flagged, clean = site.flagged[0], site.clean[0]
    before = configured.summary(tab_id)["scanned"]
    page.evaluate(
        """([a, b]) => { for (const src of [a, b]) {
             const img = document.createElement('img'); img.src = src; img.width = 128; img.height = 128;
             document.querySelector('.grid').prepend(img); } }""",
        [f"/img/{flagged.file}?inserted", f"/img/{clean.file}?inserted"],
    )
    wait_settled(configured, tab_id, before + 2)
    placed = wait_badges(page, len(site.flagged) + 1)
    assert f"/img/{flagged.file}?inserted" in placed and f"/img/{clean.file}?inserted" not in placed


def test_blob_and_data_images_are_sent_as_bytes(
    configured: Browser, site: Site, gallery: tuple[Page, int], api: Api, key: str
) -> None:
    page, tab_id = gallery
    flagged = site.flagged[-1]
    before = configured.summary(tab_id)["scanned"]
    page.evaluate(
        """async (src) => { const blob = await (await fetch(src)).blob();
             const dataUrl = await new Promise(done => { const r = new FileReader(); r.onload = () => done(r.result);
                                                        r.readAsDataURL(blob); });
             for (const url of [URL.createObjectURL(blob), dataUrl]) {
               const img = document.createElement('img'); img.width = 128; img.height = 128; img.src = url;
               document.querySelector('.grid').prepend(img); } }""",
        f"/img/{flagged.file}?blob",
    )
    wait_settled(configured, tab_id, before + 2)
    placed = wait_badges(page, len(site.flagged) + 3)
    assert any(src.startswith("blob:") for src in placed) and any(src.startswith("data:image/png") for src in placed)
    # The server never fetched it (it could not): the bytes came in a multipart upload, with no URL.
    assert not site.server.fetched_by_api("?blob")
    sightings = http("GET", f"{api.base}/v1/images/{flagged.sha256}", key).json()["recent_sightings"]
    assert any(s["image_url"] is None and s["source"] == "extension" for s in sightings), sightings


def test_icons_and_images_off_screen_are_not_sent(configured: Browser, site: Site, gallery: tuple[Page, int]) -> None:
    page, tab_id = gallery
    assert site.server.fetched_by_api("?gallery"), "the API should have fetched the gallery's images"
    assert not site.server.fetched_by_api("?icon-gallery"), "a 16 px icon was sent to the API"
    assert not site.server.fetched_by_api("?below-gallery"), "an image below the fold was sent before it was seen"
    before = configured.summary(tab_id)["scanned"]
    page.locator("#below").scroll_into_view_if_needed()
    wait_settled(configured, tab_id, before + 1)
    assert site.server.fetched_by_api("?below-gallery")
    assert not site.server.fetched_by_api("?icon-gallery")


def test_the_false_flag_button_posts_feedback_and_the_flag_stays_corrected(
    configured: Browser, site: Site, gallery: tuple[Page, int], api: Api, key: str
) -> None:
    page, tab_id = gallery
    page.evaluate("window.scrollTo(0, 0)")

    def feedback() -> dict[str, dict]:
        return {i.file: http("GET", f"{api.base}/v1/images/{i.sha256}", key).json()["feedback"] for i in site.flagged}

    assert all(counts == {} for counts in feedback().values())
    flagged_before = configured.summary(tab_id)["flagged"]
    host = page.locator("robust-scanner-badge").first
    label = host.locator(".badge").get_attribute("aria-label").split("label ")[1].split(",")[0]
    host.locator(".badge").click()
    assert host.locator(".badge").get_attribute("aria-expanded") == "true" and host.locator(".details").is_visible()
    host.locator(".false-flag").click()
    corrected = page.locator("robust-scanner-badge .badge.falseflag").first
    corrected.wait_for(state="attached", timeout=10_000)
    assert corrected.get_attribute("aria-label").startswith(f"Reported as a false flag: label {label}")
    reported = {file: counts for file, counts in feedback().items() if counts}
    assert list(reported.values()) == [{"false_flag": 1}], reported
    assert shown(next(i for i in site.flagged if i.file in reported).label) == label
    assert configured.summary(tab_id)["flagged"] < flagged_before

    # A reload asks the API again (the service worker's cache is bypassed in a new tab): the flag stays corrected.
    again, again_tab = open_gallery(configured, site, "after-feedback")
    wait_settled(configured, again_tab, len(site.images))
    again.locator("robust-scanner-badge .badge.falseflag").first.wait_for(state="attached", timeout=10_000)
    assert configured.summary(again_tab)["flagged"] == len(site.flagged) - 1
    again.close()


def test_scan_this_image_from_the_context_menu_shows_the_result(
    configured: Browser, site: Site, gallery: tuple[Page, int]
) -> None:
    """Playwright cannot open a browser menu: the menu's click handler is called as Chrome would call it."""
    page, tab_id = gallery
    clean = site.clean[-1]
    src = site.url(f"/img/{clean.file}?gallery")
    info = {"menuItemId": "scan-image", "srcUrl": src, "pageUrl": page.url, "frameId": 0}
    reply = configured.worker.evaluate("([info, tab]) => robustScanner.scanFromMenu(info, tab)", [info, {"id": tab_id}])
    assert reply == {"ok": True}
    placed = wait_for(lambda: (found := badges_by_image(page)) and found.get(f"/img/{clean.file}?gallery"), 10)
    assert placed["kind"] == "badge clean" and placed["aria"].startswith(
        f"No sign of manipulation: label {shown(clean.label)}"
    )


def test_options_persist_and_the_connection_test_shows_the_key(
    configured: Browser, api: Api, key: str, gallery: tuple[Page, int]
) -> None:
    gallery_page, _ = gallery

    def flagged_badges() -> int:
        return sum("flagged" in badge["kind"] for badge in gallery_page.evaluate(BADGES_JS))

    shown = flagged_badges()
    assert shown > 0
    page = configured.context.new_page()
    page.goto(configured.extension_url("options.html"))
    page.wait_for_selector("html[data-loaded=true]")
    fill_options(page, threshold="1000")  # a threshold of one's own: nothing scores that high
    wait_for(lambda: flagged_badges() == 0, 10, what="badges gone under a threshold of 1000")
    page.reload()
    page.wait_for_selector("html[data-loaded=true]")
    assert page.input_value("#api-url") == api.base
    assert page.input_value("#api-key") == key and page.get_attribute("#api-key", "type") == "password"
    assert page.input_value("#threshold") == "1000"
    assert page.locator("label[for=threshold]").text_content().startswith("Flag threshold")

    page.click("#test-connection")
    page.locator("#test-result:not([data-state=unknown])").wait_for()
    assert "tenant acme" in page.text_content("#test-result") and "scans:write" in page.text_content("#test-result")
    page.fill("#api-key", "rsk_nope_nope")
    page.click("#test-connection")
    page.locator("#test-result[data-state=error]").wait_for()
    assert "invalid_key" in page.text_content("#test-result") and "401" in page.text_content("#test-result")
    page.fill("#threshold", "seven")
    page.click("#save")
    assert page.get_attribute("#threshold", "aria-invalid") == "true"

    page.fill("#api-key", key)
    fill_options(page, threshold="")
    page.reload()
    page.wait_for_selector("html[data-loaded=true]")
    assert page.input_value("#threshold") == "" and page.input_value("#api-key") == key
    wait_for(lambda: flagged_badges() == shown, 10, what="the server's decisions again")
    page.close()


def test_nothing_is_sent_while_paused_or_on_a_disabled_site(configured: Browser, site: Site, api: Api) -> None:
    page, tab_id = open_gallery(configured, site, "paused")
    wait_settled(configured, tab_id, len(site.images))  # scanning is on: the page is scanned
    popup = configured.context.new_page()
    popup.goto(configured.extension_url(f"popup.html?tab={tab_id}"))
    wait_for(lambda: popup.text_content("#scanned") == str(len(site.images)), 10, what="the popup's count")
    # One flagged image was reported as a false flag earlier: it is no longer counted as flagged.
    assert popup.text_content("#flagged") == str(len(site.flagged) - 1)
    assert popup.text_content("#site") == "127.0.0.1"

    popup.check("#paused")
    wait_for(lambda: page.evaluate(BADGES_JS) == [], 5, what="badges gone while paused")
    wait_for(lambda: "paused" in popup.text_content("#api-status"), 5, what="popup says paused")
    posts = api.requests("POST", "/v1/scans")
    page.evaluate(
        """(src) => { const img = document.createElement('img'); img.src = src; img.width = 128; img.height = 128;
                      document.querySelector('.grid').prepend(img); }""",
        f"/img/{site.flagged[0].file}?while-paused",
    )
    other, _ = open_gallery(configured, site, "paused-2")
    wait_quiet(1.5)
    assert api.requests("POST", "/v1/scans") == posts, "a scan reached the API while paused"
    assert not site.server.fetched_by_api("while-paused") and not site.server.fetched_by_api("paused-2")
    assert other.evaluate(BADGES_JS) == []

    popup.uncheck("#paused")  # back on: what is on screen now is scanned
    wait_for(lambda: site.server.fetched_by_api("while-paused"), 10, what="the image after the resume")
    wait_badges(page, len(site.flagged) + 1, "badges back")

    popup.check("#site-disabled")
    assert configured.worker.evaluate("chrome.storage.local.get('disabledSites')")["disabledSites"] == ["127.0.0.1"]
    wait_for(lambda: page.evaluate(BADGES_JS) == [], 5, what="badges gone on a disabled site")
    posts = api.requests("POST", "/v1/scans")
    open_gallery(configured, site, "disabled")
    wait_quiet(1.5)
    assert api.requests("POST", "/v1/scans") == posts and not site.server.fetched_by_api("disabled")
    popup.uncheck("#site-disabled")
    for extra in (popup, other):
        extra.close()


def test_an_unreachable_api_is_reported_and_the_page_is_unaffected(configured: Browser, site: Site, api: Api) -> None:
    api.stop()
    page, tab_id = open_gallery(configured, site, "down")
    page.wait_for_timeout(800)  # the batch leaves and fails
    popup = configured.context.new_page()
    popup.goto(configured.extension_url(f"popup.html?tab={tab_id}"))
    popup.locator("#api-status[data-state=unreachable]").wait_for()
    assert popup.text_content("#api-status").startswith("API: unreachable")
    assert "Cannot reach" in popup.text_content("#api-status")
    # The page is as it was: all its images, no badge, no error anywhere.
    assert page.title() == "Gallery down" and page.evaluate(BADGES_JS) == []
    assert all(img["right"] - img["left"] > 0 for img in page.evaluate(IMAGES_JS))
    assert configured.page_errors == [] and configured.uncaught() == []
    popup.close()


def test_the_extension_passes_eslint() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed (Node.js 20): needed to lint the extension")
    if not (EXTENSION / "node_modules" / ".bin" / "eslint").exists():
        install = subprocess.run(
            [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"], cwd=EXTENSION, capture_output=True, text=True
        )
        assert install.returncode == 0, install.stdout + install.stderr
    lint = subprocess.run(
        [str(EXTENSION / "node_modules" / ".bin" / "eslint"), "."], cwd=EXTENSION, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_store_package_holds_the_extension_and_nothing_else(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("package_extension", REPO / "scripts" / "package_extension.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    package = module.package
    target = package(EXTENSION, tmp_path)
    assert target.name == "robust-scanner-extension-0.1.0.zip"
    names = set(zipfile.ZipFile(target).namelist())
    assert {"manifest.json", "background.js", "content.js", "popup.html", "options.html", "icons/icon-128.png"} <= names
    assert not {n for n in names if n.startswith(("node_modules", "dist", "tests")) or n.startswith("package")}
    assert "eslint.config.js" not in names
