"""A crawl with a network policy (what audits use): no request of any kind leaves for a refused address or port.

Two loopback sites: the allowed one (its port is the only one the policy allows) links, redirects and embeds
images pointing at the other one; the other one must receive nothing, whatever asked for it (a navigation after
a redirect, an <img>, a CSS background fetched by the image collector, robots.txt and sitemap redirects).
Without a policy (the user's own ``scanner crawl``), the same crawl reaches both.
"""

from __future__ import annotations

from scanner.crawl import CrawlConfig
from scanner.fetch import FetchPolicy
from tests.support.sites import Site, blob, html, png, redirect


def _sites(allowed: Site, other: Site) -> None:
    picture = png(80, 80, (10, 200, 30), noise=True)
    other.routes["/x.png"] = blob(png(80, 80, (200, 10, 30), noise=True))
    other.routes["/bg.png"] = blob(png(80, 80, (30, 10, 200), noise=True))
    other.routes["/page"] = html("<h1>internal</h1>")
    other.routes["/robots.txt"] = blob(b"User-agent: *\nAllow: /\n", "text/plain")
    other.routes["/sitemap.xml"] = blob(b"<urlset/>", "application/xml")
    allowed.routes["/"] = html(
        f"<img src='/ok.png' width='80' height='80'>"
        f"<img src='{other.url('/x.png')}' width='80' height='80'>"
        f"<div style='width:80px;height:80px;background-image:url({other.url('/bg.png')})'></div>"
        f"<a href='/away'>away</a> <a href='{other.url('/page')}'>direct</a>"
    )
    allowed.routes["/ok.png"] = blob(picture)
    allowed.routes["/away"] = redirect(other.url("/page"), 302)
    allowed.routes["/sitemap.xml"] = redirect(other.url("/sitemap.xml"), 302)


def _config(allowed: Site, policy: FetchPolicy | None) -> CrawlConfig:
    return CrawlConfig(
        start_url=allowed.url("/"), max_pages=10, retries=0, scroll=False, page_timeout_s=10,
        allow_subdomains=False, network_policy=policy,
    )  # fmt: skip


def test_policy_keeps_every_request_of_the_crawl_on_allowed_ports(crawl_all) -> None:  # type: ignore[no-untyped-def]
    with Site() as allowed, Site() as other:
        _sites(allowed, other)
        port = int(allowed.origin.rsplit(":", 1)[1])
        policy = FetchPolicy(allow_private=True, allowed_ports=frozenset({port}))
        pages = crawl_all(_config(allowed, policy))
        assert other.paths() == {}, "the refused site was reached"
        home = next(p for p in pages if p.requested_url == allowed.url("/"))
        assert [image.url for image in home.images] == [allowed.url("/ok.png")]
        assert allowed.count("/ok.png") >= 1


def test_without_a_policy_the_same_crawl_reaches_both_sites(crawl_all) -> None:  # type: ignore[no-untyped-def]
    """The control: the sites really do send the crawl to the other port, so the test above proves something."""
    with Site() as allowed, Site() as other:
        _sites(allowed, other)
        pages = crawl_all(_config(allowed, None))
        home = next(p for p in pages if p.requested_url == allowed.url("/"))
        assert len(home.images) == 3
        assert {"/x.png", "/bg.png", "/sitemap.xml"} <= set(other.paths())


def test_robots_txt_redirected_to_a_refused_port_is_not_followed(crawl_all) -> None:  # type: ignore[no-untyped-def]
    with Site() as allowed, Site() as other:
        _sites(allowed, other)
        allowed.routes["/robots.txt"] = redirect(other.url("/robots.txt"), 302)
        port = int(allowed.origin.rsplit(":", 1)[1])
        pages = crawl_all(_config(allowed, FetchPolicy(allow_private=True, allowed_ports=frozenset({port}))))
        assert other.paths() == {}
        # robots.txt unknown, so the site is left alone; the page says why (the policy refused the redirect).
        assert [page.error for page in pages] == ["blocked_address"]


def test_a_policy_without_private_addresses_sends_nothing_to_loopback(crawl_all) -> None:  # type: ignore[no-untyped-def]
    with Site() as site:
        site.routes["/"] = html("<img src='/a.png' width='80' height='80'>")
        site.routes["/a.png"] = blob(png(80, 80, (1, 2, 3), noise=True))
        pages = crawl_all(_config(site, FetchPolicy(allowed_ports=None)))
        assert site.paths() == {}
        assert all(not page.images for page in pages)
