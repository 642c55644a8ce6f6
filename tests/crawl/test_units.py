"""The crawler's pure parts: URL normalisation, scope, traps, robots and sitemap parsing, limits, browser lookup."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from scanner.crawl import BrowserNotFoundError, CrawlConfig, find_chromium
from scanner.crawl.browser import launch_args
from scanner.crawl.crawler import _LinkRules
from scanner.crawl.extract import keep_by_size
from scanner.crawl.frontier import Completion, Frontier
from scanner.crawl.images import ImageUnavailable, decode_data_url
from scanner.crawl.politeness import RETRY_AFTER_CAP_S, HostPacer, parse_retry_after
from scanner.crawl.robots import parse_robots
from scanner.crawl.sitemaps import parse_sitemap
from scanner.crawl.state import CrawlState
from scanner.crawl.textfetch import TooLargeError, gunzip_capped
from scanner.crawl.urls import Scope, looks_like_non_page, normalize_url, trap_reason

UA = "robust-image-scanner-crawler/0.1 (+https://github.com/)"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTP://Example.COM:80/a/b#frag", "http://example.com/a/b"),
        ("https://example.com:443", "https://example.com/"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("http://example.com/p?b=2&a=1", "http://example.com/p?a=1&b=2"),
        ("http://example.com/p;jsessionid=ABC123?x=1", "http://example.com/p?x=1"),
        ("http://example.com/p?sid=1&PHPSESSID=2&sessionid=3&x=1", "http://example.com/p?x=1"),
        ("http://example.com/p?utm_source=a&utm_medium=b&fbclid=c&gclid=d", "http://example.com/p"),
        ("http://example.com/%7euser/a%2fb", "http://example.com/~user/a%2Fb"),
        ("http://example.com/a/./b/../c", "http://example.com/a/c"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("http://example.com/p?flag", "http://example.com/p?flag"),
        ("javascript:alert(1)", None),
        ("mailto:a@example.com", None),
        ("ftp://example.com/", None),
        ("http://user:pw@example.com/", None),
    ],
)
def test_normalize_url(raw: str, expected: str | None) -> None:
    assert normalize_url(raw) == expected


def test_normalize_relative() -> None:
    assert normalize_url("../c?b=1#x", "http://example.com/a/b/") == "http://example.com/a/c?b=1"


def test_scope() -> None:
    scope = Scope("http://www.example.com/start")
    assert "https://example.com/x" in scope and "http://www.example.com/y" in scope
    assert "http://shop.example.com/" not in scope and "http://example.com:8080/" not in scope
    assert "http://badexample.com/" not in scope and "ftp://example.com/" not in scope
    wide = Scope("http://example.com/", allow_subdomains=True)
    assert "http://a.b.example.com/" in wide and "http://badexample.com/" not in wide
    assert "http://anything.org/" in Scope("http://example.com/", same_site=False)


def test_traps_and_non_pages() -> None:
    assert trap_reason("http://x.org/a/b/a/b/a/b/") == "repeated_path"
    assert trap_reason("http://x.org/loop/loop/loop/") == "repeated_path"
    assert trap_reason("http://x.org/2024/01/01/post") is None
    assert trap_reason("http://x.org/" + "/".join(f"s{i}" for i in range(40))) == "path_too_deep"
    assert trap_reason("http://x.org/?" + "q" * 3000) == "url_too_long"
    assert looks_like_non_page("http://x.org/a.PDF") and not looks_like_non_page("http://x.org/v1.2/page")


def test_query_variant_cap_survives_resume(tmp_path: Path) -> None:
    state = CrawlState(tmp_path / "s.sqlite3", resume=False)
    frontier = Frontier(state, max_depth=10, max_query_variants=3)
    frontier.start("http://x.org/")
    refused = frontier.add([f"http://x.org/cal?m={m}" for m in range(5)], 1, "http://x.org/")
    assert refused == ["http://x.org/cal?m=3", "http://x.org/cal?m=4"]
    claim = frontier.claim(set())
    assert claim is not None and claim.url == "http://x.org/"  # breadth first
    state.close()
    state = CrawlState(tmp_path / "s.sqlite3", resume=True)
    frontier = Frontier(state, max_depth=10, max_query_variants=3)
    frontier.start("http://x.org/")
    assert frontier.queued() == 4  # the interrupted claim is queued again
    assert frontier.add(["http://x.org/cal?m=9"], 1, None) == ["http://x.org/cal?m=9"]
    claim = frontier.claim(set())
    assert claim is not None
    frontier.complete(claim.url, Completion("done", 200, claim.url), ["http://x.org/deep"], depth=10)
    assert frontier.pages_used() == 1 and frontier.delivered_counts() == (1, 0)
    state.close()


def test_robots_rules_and_fractional_crawl_delay() -> None:
    text = (
        "User-agent: robust-image-scanner-crawler\nDisallow: /nope/\nCrawl-delay: 0.5\n\n"
        "User-agent: *\nDisallow: /\n\nSitemap: /sitemap_index.xml\n"
    )
    rules = parse_robots(text, "http://x.org/robots.txt")
    assert rules.allowed("http://x.org/page", UA) and not rules.allowed("http://x.org/nope/a", UA)
    assert not rules.allowed("http://x.org/page", "OtherBot/1.0")
    assert rules.crawl_delay(UA) == 1.0
    assert rules.sitemaps == ["http://x.org/sitemap_index.xml"]


def test_sitemap_parsing() -> None:
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    urlset = f"<urlset {ns}><url><loc> http://x.org/a </loc></url><url><loc>http://x.org/b</loc></url></urlset>"
    index = f"<sitemapindex {ns}><sitemap><loc>http://x.org/s1.xml</loc></sitemap></sitemapindex>"
    assert parse_sitemap(urlset.encode()) == (["http://x.org/a", "http://x.org/b"], [])
    assert parse_sitemap(index.encode()) == ([], ["http://x.org/s1.xml"])
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><urlset><url><loc>&b;</loc></url></urlset>'
    assert parse_sitemap(bomb) == ([], [])  # defusedxml refuses entities
    assert parse_sitemap(b"not xml") == ([], []) and parse_sitemap(b"<html/>") == ([], [])


def test_gzip_is_capped() -> None:
    assert gunzip_capped(gzip.compress(b"abc"), 10) == b"abc"
    with pytest.raises(TooLargeError):
        gunzip_capped(gzip.compress(b"\0" * 10_000), 1000)


def test_data_urls() -> None:
    assert decode_data_url("data:image/png;base64,iVBORw0K", 100) == (b"\x89PNG\r\n", "image/png")
    assert decode_data_url("data:image/svg+xml,%3Csvg%2F%3E", 100) == (b"<svg/>", "image/svg+xml")
    assert decode_data_url("data:image/gif;base64,R0lGOD", 100)[0].startswith(b"GIF8")  # missing padding
    with pytest.raises(ImageUnavailable, match="too_large"):
        decode_data_url("data:image/png;base64," + "A" * 400, 100)
    with pytest.raises(ImageUnavailable, match="bad_data_url"):
        decode_data_url("data:text/html,<script>", 100)


def test_size_rule() -> None:
    assert not keep_by_size((16, 16), (16, 16), 50)  # an icon
    assert keep_by_size((16, 16), (200, 200), 50)  # a big image shown small
    assert keep_by_size((300, 200), (1, 1), 50)  # shown big
    assert not keep_by_size((300, 20), (300, 20), 50)  # a thin strip
    assert keep_by_size((None, None), (None, None), 50)  # nothing known: kept


def test_retry_after_and_pacing() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("100000") == RETRY_AFTER_CAP_S
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and parse_retry_after("soon") is None
    pacer = HostPacer(0.5)
    pacer.set_delay("a", 0.1)
    assert pacer.delay("a") == 0.5  # robots never lowers the configured delay
    pacer.set_delay("a", 2.0)
    assert pacer.delay("a") == 2.0 and pacer.delay("b") == 0.5
    pacer.pause("b", 5)
    assert 4 < pacer.paused_for("b") <= 5


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        CrawlConfig(start_url="http://x.org/", concurrency=0)
    with pytest.raises(ValueError):
        CrawlConfig(start_url="http://x.org/", page_timeout_s=0)


def test_find_chromium_order(tmp_path: Path) -> None:
    exe = tmp_path / "chrome"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    managed = tmp_path / "managed"
    managed.write_text("")
    never = lambda name: None  # noqa: E731
    assert find_chromium(str(exe), {"SCANNER_CHROMIUM": "/nope"}, str(managed), never) == str(exe)
    assert find_chromium(None, {"SCANNER_CHROMIUM": str(exe)}, str(managed), never) == str(exe)
    assert find_chromium(None, {}, str(managed), never) == str(managed)
    assert find_chromium(None, {}, str(tmp_path / "absent"), lambda n: f"/opt/{n}" if n == "google-chrome" else None) \
        in ("/usr/bin/chromium", "/opt/google-chrome")
    with pytest.raises(BrowserNotFoundError, match="not an executable"):
        find_chromium("/does/not/exist", {}, None, never)


def test_find_chromium_explains_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # hide /usr/bin/chromium
    with pytest.raises(BrowserNotFoundError, match=r"apt-get install chromium.*playwright install chromium"):
        find_chromium(None, {}, str(tmp_path / "absent"), lambda name: None)


def test_launch_args() -> None:
    assert "--no-sandbox" in launch_args(euid=0) and "--no-sandbox" not in launch_args(euid=1000)
    assert {"--disable-background-networking", "--disable-component-update", "--headless=new"} <= set(launch_args(0))


def test_link_rules_include_exclude() -> None:
    config = CrawlConfig(start_url="http://x.org/", include=(r"/blog/",), exclude=(r"/blog/drafts/",))
    rules = _LinkRules(config, "http://x.org/")
    assert rules.reject_reason("http://x.org/blog/post") is None
    assert rules.reject_reason("http://x.org/shop/") == "not_included"
    assert rules.reject_reason("http://x.org/blog/drafts/1") == "excluded"
    assert rules.reject_reason("http://y.org/blog/post") == "out_of_scope"
    assert rules.reject_reason("http://x.org/blog/file.zip") == "not_a_page"
