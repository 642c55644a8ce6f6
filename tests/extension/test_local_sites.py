"""Issue 14, item 2: the extension on a local development site with the README's set-up, where the API may not
fetch the page's images (loopback address, a port other than 80/443).  The extension sends the bytes it can read
instead, so flagged images get their badges; an image it cannot read either gets a badge that says why, and the
popup lists every refusal with its reason.  Real Chromium, the real API with its default fetch rules."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from scanner.settings import Settings
from tests.support.api import start_api
from tests.support.extension import BADGES_JS, Api, Browser, Site, badges_by_image, wait_settled
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, engine: Any, site: Site) -> Iterator[Api]:
    """The API as `scanner serve` runs it by default: public addresses and ports 80/443 only."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("api"), rate_limit_per_minute=100_000, rate_limit_burst=100_000,
        engine_threads=1,
    )  # fmt: skip
    assert not settings.fetch_allow_private and not settings.fetch_any_port
    running = Api(start_api(settings, engine))
    yield running
    running.stop()


def _gallery(site: Site, tag: str, extra: str = "") -> str:
    figures = "".join(f'<img src="/img/{image.file}?{tag}" width="128" height="128" alt="">' for image in site.images)
    return f"<!doctype html><html><head><title>{tag}</title></head><body>{figures}{extra}</body></html>"


def test_a_local_site_gets_its_badges_from_the_bytes_the_browser_read(
    configured: Browser, site: Site, api: Api
) -> None:
    site.server.pages["dev.html"] = _gallery(site, "dev")
    page = configured.context.new_page()
    page.goto(site.url("dev.html"))
    tab_id = configured.tab_id(site.url("dev.html"))
    summary = wait_settled(configured, tab_id, len(site.images))
    assert summary["errors"] == 0 and summary["refusals"] == [], summary
    assert summary["scanned"] == len(site.images) and summary["flagged"] == len(site.flagged)
    placed = wait_for(lambda: (found := badges_by_image(page)) and len(found) == len(site.flagged) and found, 10)
    assert set(placed) == {f"/img/{image.file}?dev" for image in site.flagged}
    assert all(badge["kind"] == "badge flagged" for badge in placed.values())
    # The toolbar icon counts the tab's flagged images.
    badge_text = configured.worker.evaluate("id => chrome.action.getBadgeText({tabId: id})", tab_id)
    assert badge_text == str(len(site.flagged))
    # The API never fetched the loopback site: the verdicts came from the uploaded bytes.
    assert not site.server.fetched_by_api("?dev")
    page.close()


def test_an_image_neither_side_can_read_gets_a_badge_and_a_reason_in_the_popup(
    configured: Browser, site: Site, api: Api, tmp_path: Path
) -> None:
    img_dir = Path(site.server.img_dir)
    shutil.copy(img_dir / site.clean[0].file, img_dir / "vanishing.png")
    extra = '<img id="gone" src="/img/vanishing.png" width="128" height="128" alt="">'
    site.server.pages["gone.html"] = _gallery(site, "gone", extra)
    page = configured.context.new_page()
    page.goto(site.url("gone.html"))
    # The page has shown it; by the time the API refused the URL and the extension went to read it, it is gone.
    (img_dir / "vanishing.png").unlink()
    tab_id = configured.tab_id(site.url("gone.html"))
    summary = wait_settled(configured, tab_id, len(site.images) + 1)
    assert summary["errors"] == 1 and [r["code"] for r in summary["refusals"]] == ["blocked_address"], summary

    badge = wait_for(lambda: _badge_on(page, "/img/vanishing.png"), 10, what="the refusal's badge")
    assert badge["kind"] == "badge failed"
    assert badge["aria"] == "Image could not be scanned: blocked_address"
    assert "could not read the image either: HTTP 404" in badge["details"]

    popup = configured.context.new_page()
    popup.goto(configured.extension_url(f"popup.html?tab={tab_id}"))
    wait_for(lambda: popup.text_content("#errors") == "1", 10, what="the popup's error count")
    reasons = popup.locator("#refusals li").all_text_contents()
    assert len(reasons) == 1 and reasons[0].startswith("1 × blocked_address: ") and "HTTP 404" in reasons[0]
    with configured.context.expect_page() as opened:
        popup.click("#open-dashboard")
    dashboard = opened.value
    dashboard.wait_for_load_state()
    assert dashboard.url == f"{api.base}/dashboard"
    dashboard.close()
    popup.close()
    page.close()
    assert configured.page_errors == [] and configured.uncaught() == []


def _badge_on(page: Page, src: str) -> dict | None:
    found = badges_by_image(page)
    if found is None:
        return None
    return found.get(src) if page.evaluate(BADGES_JS) else None


def test_an_image_outside_the_models_classes_is_badged_with_no_confident_class(
    configured: Browser, site: Site, api: Api
) -> None:
    """The verdict of an image the robust model has no confident class for (label null, issue 12's contract)
    is known to the API beforehand, as it would be after any earlier scan of the same bytes."""
    img_dir = Path(site.server.img_dir)
    portrait = _distinct_copy(img_dir / site.clean[0].file, img_dir / "portrait.png")
    _known_verdict(api, portrait, label=None, score=5.0)
    site.server.pages["portrait.html"] = (
        '<!doctype html><html><body><img src="/img/portrait.png" width="128" height="128" alt=""></body></html>'
    )
    page = configured.context.new_page()
    page.goto(site.url("portrait.html"))
    badge = wait_for(lambda: _badge_on(page, "/img/portrait.png"), 30, what="the portrait's badge")
    assert badge["kind"] == "badge flagged"
    assert badge["aria"].startswith("Possibly adversarial image: label no confident class, score 5.00")
    assert "Labelno confident class" in badge["details"] and "unlike ordinary images" in badge["details"]
    page.close()


def _distinct_copy(source: Path, target: Path) -> bytes:
    """The picture with one pixel changed: new bytes, so a verdict of its own."""
    import io

    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        image.putpixel((0, 0), (1, 2, 3))
        out = io.BytesIO()
        image.save(out, format="PNG")
    target.write_bytes(out.getvalue())
    return out.getvalue()


def _known_verdict(api: Api, data: bytes, label: str | None, score: float) -> None:
    import hashlib

    from scanner.db.session import make_engine, make_sessionmaker, transaction
    from scanner.versions import served_versions
    from tests.support.queries import record_image, write_verdict
    from tests.support.verdicts import verdict_with_score

    settings = api.running.settings
    versions = served_versions(settings)
    engine = make_engine(settings.db_url)
    with transaction(make_sessionmaker(engine)) as session:
        image = record_image(session, hashlib.sha256(data).hexdigest(), data, "PNG", 32, 32)
        verdict = verdict_with_score(versions.model_version, versions.calibration_version, "cat", score)
        write_verdict(session, image.id, {**verdict, "label": label})
    engine.dispose()
