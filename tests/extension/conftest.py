"""The browser extension against real things: Chromium (new headless) with the unpacked extension loaded, the
API in embedded mode on a loopback port, and a page server with clean and PGD-attacked CIFAR-10 images.

One browser context and one API serve the whole module (the tests run in file order; the last one stops the
API).  What the shipped detector decides about each image is learnt first from a separate API instance (same
models, own database), so that the extension's own scans are new work for the main API (202, then polling)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Playwright, sync_playwright

from scanner.settings import Settings
from tests.support.api import start_api, upload
from tests.support.extension import (
    EXTENSION,
    Api,
    Browser,
    DemoImage,
    PageServer,
    Site,
    api_settings,
    build_site_images,
    chromium_path,
    fill_options,
    http,
    wait_scan,
)


@pytest.fixture(scope="module")
def engine() -> Any:
    from worker.engine import load_engine

    settings = Settings()
    return load_engine(str(settings.robust_bundle), str(settings.standard_bundle), threads=1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, engine: Any, web_set: Path) -> Iterator[Site]:
    img_dir, clean_photos = build_site_images(tmp_path_factory.mktemp("demo"), web_set)
    files = sorted(path.name for path in img_dir.iterdir() if path.is_file())
    # What the detector says about each image, from an API of its own (the main API must not know them yet).
    precheck = start_api(api_settings(tmp_path_factory.mktemp("precheck-api")), engine)
    try:
        key = precheck.new_key("precheck", "lab")
        data = [(img_dir / name).read_bytes() for name in files]
        reply = http("POST", f"{precheck.base}/v1/scans", key, data=upload(*data, source="api"))
        assert reply.status in (201, 202), reply.body
        items = wait_scan(precheck, key, reply.json()["id"])["items"]
    finally:
        precheck.stop()
    images = []
    for name, payload, item in zip(files, data, sorted(items, key=lambda item: item["position"]), strict=True):
        assert item["state"] == "done", item
        assert item["sha256"] == hashlib.sha256(payload).hexdigest()
        verdict = item["verdict"]
        images.append(DemoImage(name, item["sha256"], bool(verdict["flagged"]), verdict["label"]))
    if not any(image.flagged for image in images) or all(image.flagged for image in images):
        pytest.fail(f"the shipped detector should flag some but not all demo images: {images}")
    server = PageServer(img_dir)
    server.start()
    yield Site(server, images, clean_photos)
    server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, engine: Any, site: Site) -> Iterator[Api]:
    running = Api(start_api(api_settings(tmp_path_factory.mktemp("api")), engine))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def key(api: Api) -> str:
    return api.running.new_key("extension", "acme")


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    context = playwright_driver.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("profile")),
        executable_path=chromium_path(),
        headless=True,
        args=[
            "--headless=new",
            f"--disable-extensions-except={EXTENSION}",
            f"--load-extension={EXTENSION}",
            "--no-sandbox",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )
    errors: list[str] = []
    context.on("page", lambda page: page.on("pageerror", lambda err: errors.append(f"{page.url}: {err}")))
    worker = context.service_workers[0] if context.service_workers else context.wait_for_event("serviceworker")
    assert worker.url.endswith("/background.js"), worker.url
    extension_id = worker.url.split("/")[2]
    yield Browser(context, worker, extension_id, errors)
    context.close()


@pytest.fixture(scope="module")
def configured(browser: Browser, api: Api, key: str) -> Browser:
    """The extension set up the way a person does it: the options page's form."""
    page = browser.context.new_page()
    page.goto(browser.extension_url("options.html"))
    page.wait_for_selector("html[data-loaded=true]")
    fill_options(page, api_url=api.base, api_key=key)
    assert page.text_content("#save-result") == "Saved."
    page.close()
    stored = browser.worker.evaluate("chrome.storage.local.get(null)")
    assert stored["apiUrl"] == api.base and stored["apiKey"] == key, json.dumps(stored)
    return browser
