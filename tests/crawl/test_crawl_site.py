"""One crawl of a fixture site that has every kind of image and every kind of trouble, checked page by page.

The crawl runs once per module (it is the slow part); each test asserts one behaviour on its results or on what
the server saw.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from scanner.crawl import CrawlConfig, Crawler, CrawlStats, PageResult
from tests.support.sites import Site, blob, data_url, html, png, redirect, status

SMALL = png(100, 80, (200, 0, 0))
LARGE = png(800, 400, (0, 200, 0))
PLACEHOLDER = png(800, 400, (90, 90, 90))
PIC_WIDE = png(640, 300, (0, 0, 200))
PIC_NARROW = png(300, 300, (0, 200, 200))
DATA_PNG = png(64, 64, (250, 250, 0))
ICON = png(16, 16, (10, 10, 10))
HUGE = png(400, 400, (0, 0, 0), noise=True)  # ~480 kB, over the test's byte cap
BG = png(320, 200, (120, 30, 30))
BEFORE = png(120, 90, (30, 120, 30))
HIDDEN_BG = png(200, 150, (30, 30, 120))
LATE = png(150, 100, (140, 140, 0))
LAZY_NATIVE = png(160, 120, (0, 140, 140))
LAZY_IO = png(170, 110, (140, 0, 140))
LANDING = png(90, 90, (60, 60, 60))
DUP = png(110, 70, (7, 77, 177))
ORPHAN = png(130, 130, (200, 100, 0))
BUSY = png(70, 70, (100, 0, 200))
MOVED = png(150, 150, (33, 66, 99))
FRAMED = png(140, 100, (10, 200, 100))
SHADOW = png(120, 120, (200, 10, 100))
POSTER = png(320, 180, (50, 100, 150))
SVG_IMAGE = png(100, 100, (150, 100, 50))
SVG = "<svg xmlns='http://www.w3.org/2000/svg' width='100' height='100'><rect width='100' height='100'/></svg>"
SVG_URL = "data:image/svg+xml," + SVG.replace("<", "%3C").replace(">", "%3E").replace("'", "%27").replace(" ", "%20")
MAX_BYTES = 300_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def busy_then_ok() -> Callable[[web.Request], object]:
    calls = {"n": 0}
    page = html("<h1>busy</h1><img src='/img/busy.png' width=70 height=70>")

    async def handler(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        return await page(request)

    return handler


def main_site(external: str, elsewhere: str) -> dict[str, object]:
    index = f"""
      <a href="/gallery">gallery</a> <a href="/css#top">css</a> <a href="/late">late</a>
      <a href="/redirect-me">redirect</a> <a href="/missing">missing</a> <a href="/broken-server">500</a>
      <a href="/private/secret">private</a> <a href="/page;jsessionid=ABC123">s1</a> <a href="/page?sid=42">s2</a>
      <a href="/page?PHPSESSID=9&utm_source=news&fbclid=x">s3</a> <a href="{external}/">elsewhere</a>
      <a href="/busy">busy</a> <a href="/doc.pdf">pdf</a> <a href="/download">download</a>
      <a href="/old-landing">old</a> <a href="/go-away">away</a> <a href="/media">media</a>
      <a href="mailto:someone@example.com">mail</a> <a href="javascript:void(0)">js</a>
      <map name="m"><area href="/area-target" shape="rect" coords="0,0,10,10"></map>
    """
    gallery = f"""
      <img id="srcset" src="/img/placeholder.png" srcset="/img/small.png 100w, /img/large.png 800w" sizes="800px">
      <picture><source media="(min-width: 600px)" srcset="/img/pic-wide.png">
        <img src="/img/pic-narrow.png" alt=""></picture>
      <img src="{data_url(DATA_PNG)}" width="64" height="64">
      <img src="/img/icon.png" width="16" height="16">
      <img src="/img/huge.png" width="400" height="400">
      <img src="/img/missing.png" width="100" height="100">
      <img src="/img/dup-a.png">
      <img src="/img/moved.png">
    """
    css = """
      <style>
        #bg { width: 320px; height: 200px; background-image: url('/img/bg.png'); }
        #before::before { content: url('/img/before.png'); }
        #hidden { display: none; width: 200px; height: 150px; background: url(/img/hidden-bg.png); }
        #svg { width: 100px; height: 100px; background-image: url("SVG_URL"); }
      </style>
      <div id="bg"></div><div id="before"></div><div id="hidden"></div><div id="svg"></div>
    """.replace("SVG_URL", SVG_URL)
    late = """
      <p>top</p>
      <div style="height: 3000px"></div>
      <img src="/img/lazy-native.png" loading="lazy" width="160" height="120">
      <div style="height: 1500px"></div>
      <div id="io" style="width: 170px; height: 110px"></div>
      <script>
        window.addEventListener('load', () => setTimeout(() => {
          const img = document.createElement('img');
          img.src = '/img/late.png';
          document.body.prepend(img);
        }, 300));
        new IntersectionObserver((entries, observer) => {
          for (const entry of entries) if (entry.isIntersecting) {
            const img = document.createElement('img');
            img.src = '/img/' + ['io', 'lazy'].join('-') + '.png';
            entry.target.appendChild(img);
            observer.disconnect();
          }
        }).observe(document.getElementById('io'));
      </script>
    """
    return {
        "/": html(index),
        "/gallery": html(gallery),
        "/css": html(css),
        "/late": html(late),
        "/redirect-me": redirect("/landing"),
        "/old-landing": redirect("/landing", 302),
        "/go-away": redirect(f"{elsewhere}/"),
        "/media": html(MEDIA),
        "/frame": html("<img src='/img/framed.png'>"),
        "/img/framed.png": blob(FRAMED),
        "/img/moved.png": redirect("/img/moved-here.png"),
        "/img/moved-here.png": blob(MOVED),
        "/img/shadow.png": blob(SHADOW),
        "/img/poster.png": blob(POSTER),
        "/img/svg-image.png": blob(SVG_IMAGE),
        "/landing": html("<img src='/img/landing.png' width=90 height=90><a href='/'>home</a>"),
        "/missing": status(404),
        "/broken-server": status(500),
        "/private/secret": html("<img src='/img/secret.png'>"),
        "/page": html(
            "<img src='/img/dup-b.png'><div style='display:none;background:url(/img/hidden-bg.png)'>x</div>"
        ),
        "/busy": busy_then_ok(),
        "/download": blob(b"%PDF-1.4\n%%EOF\n", "application/pdf"),
        "/doc.pdf": blob(b"%PDF-1.4\n%%EOF\n", "application/pdf"),
        "/area-target": html("<p>area</p>"),
        "/orphan": html("<img src='/img/orphan.png' width=130 height=130>"),
        "/robots.txt": blob(b"User-agent: *\nDisallow: /private/\n\nSitemap: /sitemap-index.xml\n", "text/plain"),
        "/sitemap-index.xml": lambda r: _sitemap_index(r),
        "/sitemap-pages.xml": lambda r: _sitemap_pages(r),
        "/img/small.png": blob(SMALL),
        "/img/large.png": blob(LARGE),
        "/img/placeholder.png": blob(PLACEHOLDER),
        "/img/pic-wide.png": blob(PIC_WIDE),
        "/img/pic-narrow.png": blob(PIC_NARROW),
        "/img/icon.png": blob(ICON),
        "/img/huge.png": blob(HUGE),
        "/img/bg.png": blob(BG),
        "/img/before.png": blob(BEFORE),
        "/img/hidden-bg.png": blob(HIDDEN_BG),
        "/img/late.png": blob(LATE),
        "/img/lazy-native.png": blob(LAZY_NATIVE),
        "/img/io-lazy.png": blob(LAZY_IO),
        "/img/landing.png": blob(LANDING),
        "/img/dup-a.png": blob(DUP),
        "/img/dup-b.png": blob(DUP),
        "/img/orphan.png": blob(ORPHAN),
        "/img/busy.png": blob(BUSY),
        "/img/secret.png": blob(SMALL),
    }


MEDIA = """
  <iframe src="/frame" width="300" height="200"></iframe>
  <div id="host"></div>
  <script>
    const root = document.getElementById('host').attachShadow({mode: 'open'});
    root.innerHTML = "<img src='/img/shadow.png' width=120 height=120>";
  </script>
  <video poster="/img/poster.png" width="320" height="180"></video>
  <svg width="100" height="100"><image href="/img/svg-image.png" width="100" height="100"/></svg>
"""


async def _sitemap_index(request: web.Request) -> web.StreamResponse:
    base = f"http://{request.host}"
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<sitemap><loc>{base}/sitemap-pages.xml</loc></sitemap></sitemapindex>"
    )
    return web.Response(text=body, content_type="application/xml")


async def _sitemap_pages(request: web.Request) -> web.StreamResponse:
    base = f"http://{request.host}"
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<url><loc>{base}/orphan</loc></url><url><loc>http://elsewhere.invalid/x</loc></url></urlset>"
    )
    return web.Response(text=body, content_type="application/xml")


@dataclass
class Crawled:
    site: Site
    external: Site
    results: list[PageResult]
    stats: CrawlStats
    seconds: float
    elsewhere: Site

    def page(self, path: str) -> PageResult:
        url = self.site.url(path)
        matches = [r for r in self.results if r.requested_url == url or r.url == url]
        assert matches, f"{path} was not crawled; crawled: {[r.requested_url for r in self.results]}"
        return matches[0]

    def image(self, path: str, page_path: str):  # type: ignore[no-untyped-def]
        url = self.site.url(path)
        found = [i for i in self.page(page_path).images if i.url == url]
        return found[0] if found else None


@pytest.fixture(scope="module")
def crawled(run, browser) -> Iterator[Crawled]:  # type: ignore[no-untyped-def]
    with Site() as external, Site() as elsewhere, Site() as site:
        elsewhere.routes["/"] = html("<img src='/img/x.png'>")
        site.routes.update(main_site(external.origin, elsewhere.origin))  # type: ignore[arg-type]
        config = CrawlConfig(
            start_url=site.url("/"), max_image_bytes=MAX_BYTES, retries=2, retry_backoff_s=0.05, page_timeout_s=10
        )

        async def go() -> tuple[list[PageResult], CrawlStats]:
            async with Crawler(config, browser=browser) as crawler:
                return [page async for page in crawler.crawl()], crawler.stats

        started = time.monotonic()
        results, stats = run(go())
        yield Crawled(site, external, results, stats, time.monotonic() - started, elsewhere)


def test_srcset_reports_the_variant_the_browser_chose(crawled: Crawled) -> None:
    image = crawled.image("/img/large.png", "/gallery")
    assert image is not None and image.kind == "srcset" and image.data == LARGE and image.sha256 == sha(LARGE)
    assert crawled.image("/img/placeholder.png", "/gallery") is None
    assert crawled.site.count("/img/placeholder.png") == 0


def test_picture_reports_the_matching_source(crawled: Crawled) -> None:
    image = crawled.image("/img/pic-wide.png", "/gallery")
    assert image is not None and image.kind == "picture" and image.data == PIC_WIDE
    assert crawled.image("/img/pic-narrow.png", "/gallery") is None


def test_redirected_image_keeps_its_page_url_and_is_not_fetched_twice(crawled: Crawled) -> None:
    image = crawled.image("/img/moved.png", "/gallery")
    assert image is not None and image.data == MOVED
    assert crawled.site.count("/img/moved-here.png") == 1  # the browser's response was used


def test_data_url_is_decoded_and_labelled(crawled: Crawled) -> None:
    images = {i.url: i for i in crawled.page("/gallery").images}
    label = f"data:image/png;sha256={sha(DATA_PNG)}"
    assert images[label].data == DATA_PNG and images[label].kind == "data-url"
    svg = [i for i in crawled.page("/css").images if i.url.startswith("data:image/svg+xml;sha256=")]
    assert len(svg) == 1 and svg[0].data == SVG.encode() and svg[0].content_type == "image/svg+xml"


def test_icons_too_large_and_broken_images_are_left_out(crawled: Crawled) -> None:
    urls = {i.url for i in crawled.page("/gallery").images}
    for path in ("/img/icon.png", "/img/huge.png", "/img/missing.png"):
        assert crawled.site.url(path) not in urls
    assert crawled.page("/gallery").error is None
    assert crawled.stats.images_skipped >= 2  # huge (too large) and missing (http_404)


def test_css_images_including_pseudo_and_hidden(crawled: Crawled) -> None:
    bg = crawled.image("/img/bg.png", "/css")
    before = crawled.image("/img/before.png", "/css")
    hidden = crawled.image("/img/hidden-bg.png", "/css")
    assert bg is not None and bg.kind == "css-background" and (bg.width, bg.height) == (320, 200)
    assert before is not None and before.kind == "css-pseudo" and before.data == BEFORE
    assert hidden is not None and hidden.data == HIDDEN_BG


def test_image_bytes_fetched_once_but_reported_on_every_page(crawled: Crawled) -> None:
    on_css = crawled.image("/img/hidden-bg.png", "/css")
    on_page = crawled.image("/img/hidden-bg.png", "/page")
    assert on_css is not None and on_page is not None and on_css.sha256 == on_page.sha256
    assert crawled.site.count("/img/hidden-bg.png") == 1  # never loaded by the browser: our fetch, once


def test_late_and_lazy_images_are_found(crawled: Crawled) -> None:
    late = crawled.image("/img/late.png", "/late")
    native = crawled.image("/img/lazy-native.png", "/late")
    io = crawled.image("/img/io-lazy.png", "/late")
    assert late is not None and late.kind == "inserted" and late.data == LATE
    assert native is not None and native.kind == "lazy" and native.data == LAZY_NATIVE
    assert io is not None and io.data == LAZY_IO


def test_same_bytes_under_two_urls_share_a_sha256(crawled: Crawled) -> None:
    a = crawled.image("/img/dup-a.png", "/gallery")
    b = crawled.image("/img/dup-b.png", "/page")
    assert a is not None and b is not None and a.sha256 == b.sha256 == sha(DUP)


def test_redirects_are_followed_and_the_target_crawled_once(crawled: Crawled) -> None:
    pages = [r for r in crawled.results if r.requested_url.endswith(("/redirect-me", "/old-landing"))]
    assert {r.url for r in pages} == {crawled.site.url("/landing")} and all(r.status == 200 for r in pages)
    first, second = sorted(pages, key=lambda r: r.error is not None)
    assert first.error is None and [i.data for i in first.images] == [LANDING]
    assert second.error == "already_crawled" and second.images == []
    assert crawled.site.url("/landing") not in [r.requested_url for r in crawled.results]


def test_redirect_out_of_scope_is_not_extracted(crawled: Crawled) -> None:
    page = crawled.page("/go-away")
    assert page.error == "redirected_out_of_scope" and page.url == crawled.elsewhere.url("/") and page.images == []


def test_frames_shadow_dom_posters_and_svg_images(crawled: Crawled) -> None:
    images = {i.url: i for i in crawled.page("/media").images}
    expected = {"/img/framed.png": FRAMED, "/img/shadow.png": SHADOW, "/img/poster.png": POSTER,
                "/img/svg-image.png": SVG_IMAGE}
    for path, data in expected.items():
        assert images[crawled.site.url(path)].data == data, path
    assert images[crawled.site.url("/img/poster.png")].kind == "poster"
    assert images[crawled.site.url("/img/svg-image.png")].kind == "svg-image"
    assert crawled.site.url("/frame") not in [r.requested_url for r in crawled.results]


def test_http_errors_and_retries(crawled: Crawled) -> None:
    missing = crawled.page("/missing")
    assert (missing.status, missing.error) == (404, "http_404")
    assert crawled.site.count("/missing") == 1
    broken = crawled.page("/broken-server")
    assert (broken.status, broken.error) == (500, "http_500")
    assert crawled.site.count("/broken-server") == 3  # the first try and retries=2


def test_retry_after_is_honoured(crawled: Crawled) -> None:
    page = crawled.page("/busy")
    assert page.error is None and page.status == 200 and len(page.images) == 1
    first, second = crawled.site.starts("/busy")
    assert second - first >= 0.95


def test_robots_disallowed_path_is_never_requested(crawled: Crawled) -> None:
    assert crawled.site.count("/private/secret") == 0
    assert crawled.page("/private/secret").error == "robots_disallowed"


def test_sitemap_page_is_crawled(crawled: Crawled) -> None:
    orphan = crawled.page("/orphan")
    assert orphan.depth == 1 and [i.data for i in orphan.images] == [ORPHAN]


def test_out_of_scope_and_non_pages_are_not_requested(crawled: Crawled) -> None:
    assert crawled.external.hits == []
    assert crawled.site.count("/doc.pdf") == 0
    download = crawled.page("/download")
    assert download.error == "not_html" and download.images == []
    assert crawled.page("/area-target").error is None


def test_session_ids_and_tracking_params_are_one_page(crawled: Crawled) -> None:
    assert crawled.site.count("/page") == 1
    assert [r.requested_url for r in crawled.results].count(crawled.site.url("/page")) == 1


def test_every_page_once_and_stats(crawled: Crawled) -> None:
    requested = [r.requested_url for r in crawled.results]
    assert len(requested) == len(set(requested))
    stats = crawled.stats
    assert stats.pages_done == sum(1 for r in crawled.results if r.error is None)
    skips = (None, "robots_disallowed", "already_crawled")
    assert stats.pages_failed == sum(1 for r in crawled.results if r.error not in skips)
    assert stats.images_found == sum(len(r.images) for r in crawled.results)
    assert stats.queued == 0 and stats.in_flight == 0 and stats.skipped >= 3
    print(f"main site: {len(crawled.results)} pages in {crawled.seconds:.1f} s")
