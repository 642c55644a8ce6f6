"""``scanner crawl`` and ``scanner report`` as users run them (subprocesses, real Chromium), embedded and against
a running server (``--api``), on a local site of CIFAR-10 test images of which some are attacked."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from scanner.cli import DEFAULT_DATA
from scanner.demo_site import build_demo_site
from scanner.settings import BUNDLED_STANDARD, Settings
from tests.support.api import RunningApi, start_api
from tests.support.commands import serving

pytestmark = pytest.mark.slow  # scanner crawl in subprocesses, over a demo site built with the shipped models

SCANNER = str(Path(sys.executable).with_name("scanner"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list]]:
    """The demo site (2 pages x 4 images, every second attacked) served on loopback from a thread."""
    if not DEFAULT_DATA.exists():
        pytest.fail(f"the CIFAR-10 test images are missing: expected {DEFAULT_DATA} (see ../shared/data/README.md)")
    root = tmp_path_factory.mktemp("site")
    images = build_demo_site(root, DEFAULT_DATA, BUNDLED_STANDARD, pages=2, per_page=4)
    loop = asyncio.new_event_loop()
    ready, holder = threading.Event(), {}

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/", _index(root))
        app.router.add_static("/", root)
        holder["runner"] = runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        holder["port"] = runner.addresses[0][1]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    ready.wait(30)
    yield f"http://127.0.0.1:{holder['port']}/", images
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


def scanner(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    env.update(SCANNER_DATA_DIR=str(data_dir), SCANNER_ENGINE_THREADS="1", OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([SCANNER, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.browser
def test_embedded_crawl_reports_every_image_and_exports(site: tuple[str, list], tmp_path: Path) -> None:
    url, images = site
    done = scanner(tmp_path, "crawl", url, "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "embedded"
    assert report["counts"]["images"] == len(images) == report["counts"]["analysed"]
    assert report["counts"]["pages_failed"] == 0 and report["counts"]["pending"] == 0
    found = {image["url"].split("/", 3)[3]: image for image in report["images"]}
    assert set(found) == {image.file for image in images}
    for image in images:
        assert found[image.file]["pages"] == [url + image.page]
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert {row["sha256"] for row in rows} == {image["sha256"] for image in report["images"]}
    flagged = [image for image in report["images"] if image["flagged"]]
    assert "flagged images" in done.stdout or "no image was flagged" in done.stdout

    # The verdicts landed in the local database: `scanner report` reads them back.
    listed = scanner(tmp_path, "report", "--format", "json", "--site", "127.0.0.1")
    assert listed.returncode == 0, listed.stderr
    assert {row["sha256"] for row in json.loads(listed.stdout)} == {image["sha256"] for image in flagged}
    # A site given with its port (as the crawl was) or as a URL means the same host, not nothing.
    for site_filter in (url.split("/")[2], url):
        again = scanner(tmp_path, "report", "--format", "json", "--site", site_filter)
        assert json.loads(again.stdout) == json.loads(listed.stdout), site_filter
    # The crawl's own short-lived key is gone with the crawl: nothing piles up in `scanner keys list`.
    keys_listed = scanner(tmp_path, "keys", "list")
    assert keys_listed.stdout.splitlines()[0].split() == ["id", "tenant", "name", "scopes", "state", "expires"]
    assert "embedded crawl" not in keys_listed.stdout


@pytest.mark.browser
def test_fail_on_flagged_exits_3_when_the_attacked_images_are_caught(site: tuple[str, list], tmp_path: Path) -> None:
    url, _ = site
    done = scanner(tmp_path, "crawl", url, "--fail-on-flagged", "--json", str(tmp_path / "r.json"))
    flagged = json.loads((tmp_path / "r.json").read_text())["counts"]["flagged"]
    assert flagged > 0, "the shipped detector should catch some white-box attacks on the standard model"
    assert done.returncode == 3


@pytest.mark.browser
def test_resume_continues_without_recrawling(site: tuple[str, list], tmp_path: Path) -> None:
    url, images = site
    first = scanner(tmp_path, "crawl", url, "--max-pages", "2", "--json", str(tmp_path / "a.json"))
    assert first.returncode == 0, first.stderr
    second = scanner(tmp_path, "crawl", url, "--resume", "--json", str(tmp_path / "b.json"))
    assert second.returncode == 0, second.stderr
    report_a, report_b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    pages_a = [page["url"] for page in report_a["pages"]]
    pages_b = [page["url"] for page in report_b["pages"]]
    # The resumed crawl fetched no page twice, and its summary is the whole crawl's, not only its last part.
    assert len(pages_a) == 2 and len(pages_b) == len(set(pages_b)) and set(pages_a) < set(pages_b)
    assert {url + "page-1.html", url + "page-2.html"} <= set(pages_b)
    assert report_b["counts"]["images"] == len(images) == report_b["counts"]["analysed"]
    assert report_b["counts"]["pages"] == len(pages_b)


@pytest.mark.browser
def test_crawl_and_report_against_a_running_server(site: tuple[str, list], tmp_path: Path) -> None:
    url, images = site
    server: RunningApi = start_api(
        Settings(
            data_dir=tmp_path / "server", rate_limit_per_minute=100_000, rate_limit_burst=100_000, engine_threads=1
        )
    )
    try:
        key = server.new_key("crawler", "acme")
        done = scanner(
            tmp_path / "client", "crawl", url, "--api", server.base, "--key", key, "--json", str(tmp_path / "r.json")
        )
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["mode"] == f"server {server.base}" and report["counts"]["analysed"] == len(images)
        assert not (tmp_path / "client" / "scanner.db").exists()  # nothing analysed or stored locally
        listed = scanner(tmp_path / "client", "report", "--api", server.base, "--key", key, "--format", "csv")
        assert listed.returncode == 0, listed.stderr
        rows = list(csv.DictReader(listed.stdout.splitlines()))
        assert {row["sha256"] for row in rows} == {i["sha256"] for i in report["images"] if i["flagged"]}
        bad = scanner(tmp_path / "client", "crawl", url, "--api", server.base, "--key", "rsk_000000000000_" + "x" * 43)
        assert bad.returncode == 2 and "invalid_key" in bad.stderr
    finally:
        server.stop()


def test_clear_errors(tmp_path: Path) -> None:
    no_key = scanner(tmp_path, "crawl", "http://127.0.0.1:9/", "--api", "http://127.0.0.1:9")
    assert no_key.returncode == 2 and "--api needs --key" in no_key.stderr
    no_browser = scanner(tmp_path, "crawl", "http://127.0.0.1:9/", "--browser", str(tmp_path / "no-chromium"))
    assert no_browser.returncode == 2 and "chromium" in no_browser.stderr.lower()


def _index(root: Path):  # noqa: ANN202 - an aiohttp handler
    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(root / "index.html")

    return index


@pytest.mark.browser
def test_report_explains_verdicts_and_marks_confirmed_false_flags(site: tuple[str, list], tmp_path: Path) -> None:
    url, _ = site
    crawled = scanner(tmp_path, "crawl", url, "--json", str(tmp_path / "r.json"))
    assert crawled.returncode == 0, crawled.stderr
    flagged = [image for image in json.loads((tmp_path / "r.json").read_text())["images"] if image["flagged"]]
    assert flagged, "the shipped detector should catch some white-box attacks on the standard model"
    # The crawl's own table names images by URL and says what the numbers mean.
    assert flagged[0]["url"] in crawled.stdout.replace("\n", "") and "threshold" in crawled.stdout
    assert "perturbation detectors find this image unlike ordinary images" in crawled.stdout.replace("\n", " ")

    key = json.loads(scanner(tmp_path, "keys", "create", "--name", "me", "--json").stdout)["key"]
    with serving(tmp_path) as served:
        _post_json(f"{served.base}/v1/images/{flagged[0]['sha256']}/feedback", key, {"kind": "false_flag"})
    table = scanner(tmp_path, "report")
    assert table.returncode == 0, table.stderr
    text = table.stdout.replace("\n", " ")
    assert "confirmed false flag" in text and flagged[0]["url"] in table.stdout.replace("\n", "")
    assert "label = robust model's class, or no confident class" in text
    shown = json.loads(scanner(tmp_path, "report", "--format", "json").stdout)
    hidden = json.loads(scanner(tmp_path, "report", "--format", "json", "--false-flags", "hide").stdout)
    only = json.loads(scanner(tmp_path, "report", "--format", "json", "--false-flags", "only").stdout)
    assert [row["sha256"] for row in only] == [flagged[0]["sha256"]] and only[0]["false_flag"] is True
    assert {row["sha256"] for row in hidden} == {row["sha256"] for row in shown} - {flagged[0]["sha256"]}
    for option in ("--min-score", "--label", "--limit", "--format", "--false-flags"):
        assert option in scanner(tmp_path, "report", "--help").stdout


def _post_json(url: str, key: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)
