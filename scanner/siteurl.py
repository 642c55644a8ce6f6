"""What the CLI makes of a site or server a person typed: one rule for ``scanner crawl SITE``, ``scanner audit add
SITE`` and every ``--api``.  A bare host gets https://, a bare loopback host:port http:// (a development server
rarely speaks TLS); anything else that is not an http(s) URL with a host is refused with a message for people."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
EXAMPLE = "give a URL such as https://shop.example/ or 127.0.0.1:8000"


def site_url(text: str) -> str:
    """The URL ``text`` means (raises ValueError)."""
    text = text.strip()
    if "://" not in text:
        host = text.split("/", 1)[0]
        if not _HOST.match(host):
            raise ValueError(f"not a site: {text!r} ({EXAMPLE})")
        loopback = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        text = f"{'http' if loopback.lower() in LOOPBACK_HOSTS else 'https'}://{text}"
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number or out of range
    except ValueError as err:
        raise ValueError(f"not a site: {text!r} ({err})") from err
    if parts.scheme not in ("http", "https") or not parts.hostname or not _HOST.match(parts.netloc):
        raise ValueError(f"not a site: {text!r} ({EXAMPLE})")
    return text


def api_url(text: str) -> str:
    """The base URL of a scanner server given as ``--api``: ``127.0.0.1:8080`` is ``http://127.0.0.1:8080``."""
    try:
        return site_url(text).rstrip("/")
    except ValueError as err:
        raise ValueError(f"--api {text!r} is not a server: give its URL, e.g. http://127.0.0.1:8080") from err


def site_filter(text: str) -> str:
    """The host of a ``--site`` filter (``shop.example``, ``127.0.0.1:8000``, ``https://shop.example/``): raises
    ValueError when it names no host, rather than matching nothing."""
    try:
        host = urlsplit(text.strip() if "://" in text else f"//{text.strip()}").hostname
    except ValueError:
        host = None
    if not host:
        raise ValueError(f"--site {text!r} names no host: give one, e.g. shop.example or 127.0.0.1:8000")
    return text
