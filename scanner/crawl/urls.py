"""URL normalisation, crawl scope and trap detection: pure functions over strings.

Why normalise: the frontier de-duplicates by URL string, so every spelling of one page must become one string
(``HTTP://Example.com:80/a?b=2&a=1#top`` and ``http://example.com/a?a=1&b=2``), and URLs that differ only in a
session id or a tracking parameter (``;jsessionid=...``, ``?sid=``, ``utm_*``, ``fbclid``) are the same page.
Without that, one site with session ids in its links is an endless crawl.

Why scope by "site" and not by origin: ``http://`` and ``https://`` and ``www.`` are the same site to a person,
while a different non-default port is a different server. Subdomains are only in scope when asked for.

Trap detection here covers what can be seen in one URL: over-long URLs, too many path segments and repeated
runs of segments (``/a/b/a/b/a/b``, made by relative links that resolve against themselves). Traps that need the
frontier (many query variants of one path, calendars) are capped in ``frontier.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
SESSION_PARAMS = frozenset({"sid", "sessionid", "session_id", "phpsessid", "jsessionid", "aspsessionid", "cfid",
                            "cftoken"})
TRACKING_PARAMS = frozenset({"fbclid", "gclid", "dclid", "msclkid", "yclid", "mc_cid", "mc_eid", "_ga", "igshid"})
TRACKING_PREFIXES = ("utm_",)
# ;jsessionid=ABC (Java), ;sid=..., ;phpsessid=... as path parameters of the last or any segment.
_PATH_SESSION = re.compile(r";(?:jsessionid|sid|sessionid|phpsessid)=[^/;?]*", re.IGNORECASE)
# Links to these are not pages; they are never queued (a linked image is not reported either).
NON_PAGE_EXTENSIONS = frozenset(
    {
        "7z", "apk", "avi", "avif", "bin", "bmp", "bz2", "css", "csv", "dmg", "doc", "docx", "eot", "exe", "flac",
        "gif", "gz", "ico", "iso", "jar", "jpeg", "jpg", "js", "json", "m4a", "m4v", "mkv", "mov", "mp3", "mp4", "mpeg",
        "mpg", "msi", "odt", "ogg", "otf", "pdf", "png", "ppt", "pptx", "rar", "rss", "svg", "tar", "tgz", "tif",
        "tiff", "ttf", "txt", "wav", "webm", "webp", "woff", "woff2", "xls", "xlsx", "xml", "zip",
    }
)

MAX_URL_LENGTH = 2048
MAX_PATH_SEGMENTS = 30
MAX_SEGMENT_REPEATS = 3  # a run of 1..4 segments repeated this many times in a row is a trap


def _is_dropped_param(name: str) -> bool:
    key = name.lower()
    return key in SESSION_PARAMS or key in TRACKING_PARAMS or key.startswith(TRACKING_PREFIXES)


def _normal_host(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        return host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return host


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _normal_escapes(text: str, safe: str) -> str:
    """Quote what must be quoted, decode escaped unreserved characters and upper-case the other escapes."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT.sub(fix, quote(text, safe=safe + "%"))


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if path.endswith(("/.", "/..")):
        out.append("")
    return "/" + "/".join(out)


def _normal_path(path: str) -> str:
    path = _remove_dot_segments(_PATH_SESSION.sub("", path) or "/")
    return _normal_escapes(path, safe="/;:@&=+$,!~*'()[]")


def _normal_query(query: str) -> str:
    """Sorted parameters without session ids and tracking; each name=value kept as written (escapes normalised)."""
    kept = []
    for pair in query.split("&"):
        if not pair:
            continue
        name = pair.split("=", 1)[0]
        if not _is_dropped_param(unquote(name.replace("+", " "))):
            kept.append(_normal_escapes(pair, safe="=+:@/?!$'()*,;[]"))
    return "&".join(sorted(kept))


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The canonical form of an http(s) URL (resolved against ``base``), or None when it is not one."""
    try:
        parts = urlsplit(urljoin(base, url.strip()) if base else url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return None
    host = _normal_host(parts.hostname)
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, _normal_path(parts.path), _normal_query(parts.query), ""))


def host_key(url: str) -> str:
    """host[:port] of a normalised URL: the unit of politeness (delay, concurrency)."""
    return urlsplit(url).netloc


def origin(url: str) -> str:
    """scheme://host[:port]: where robots.txt lives."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def path_key(url: str) -> str:
    """The URL without its query: query-string variants of one path share it."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _site(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    host = host.removeprefix("www.")
    port = parts.port if parts.port not in (None, DEFAULT_PORTS.get(parts.scheme)) else None
    return host, port


@dataclass(frozen=True)
class Scope:
    """Which URLs belong to the crawl: the start URL's site (``www.`` ignored), optionally its subdomains."""

    start_url: str
    same_site: bool = True
    allow_subdomains: bool = False

    def __contains__(self, url: str) -> bool:
        if urlsplit(url).scheme not in DEFAULT_PORTS:
            return False
        if not self.same_site:
            return True
        host, port = _site(url)
        start_host, start_port = _site(self.start_url)
        if port != start_port:
            return False
        return host == start_host or (self.allow_subdomains and host.endswith("." + start_host))


def _has_repeated_run(segments: list[str]) -> bool:
    for size in range(1, 5):
        needed = size * MAX_SEGMENT_REPEATS
        for start in range(len(segments) - needed + 1):
            run = segments[start:start + size]
            if all(segments[start + i * size:start + (i + 1) * size] == run for i in range(1, MAX_SEGMENT_REPEATS)):
                return True
    return False


def trap_reason(url: str) -> str | None:
    """Why a URL looks like a crawler trap by itself ("url_too_long", "path_too_deep", "repeated_path"), or None."""
    if len(url) > MAX_URL_LENGTH:
        return "url_too_long"
    segments = [s for s in urlsplit(url).path.split("/") if s]
    if len(segments) > MAX_PATH_SEGMENTS:
        return "path_too_deep"
    if _has_repeated_run(segments):
        return "repeated_path"
    return None


def looks_like_non_page(url: str) -> bool:
    """True for links whose extension says they are not HTML pages (PDFs, images, archives...)."""
    last = urlsplit(url).path.rsplit("/", 1)[-1]
    return "." in last and last.rsplit(".", 1)[-1].lower() in NON_PAGE_EXTENSIONS
