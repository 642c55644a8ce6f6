"""The reports dashboard: a static page (``/dashboard``) that signs in with an API key kept in the browser's
``sessionStorage`` and reads the JSON API with ``Authorization: Bearer``, and ``/v1/images/{sha256}/raw``, the
stored bytes of an image the caller's tenant has seen, which the page shows as thumbnails.

The page, its script and its style sheet are served with a strict Content-Security-Policy: scripts and styles
only from this origin, images from this origin, ``blob:`` (thumbnails fetched with the key) and ``data:``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from scanner.api.context import in_thread, require_scope, services
from scanner.api.problems import Problem
from scanner.db import queries
from scanner.db.models import ImageBlob

STATIC_DIR = Path(__file__).with_name("static") / "dashboard"
SHA256_HEX = frozenset("0123456789abcdef")
ASSETS = {
    "/": ("root.html", "text/html"),  # people type the server's address: point them to the dashboard
    "/dashboard": ("index.html", "text/html"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css"),
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
IMAGE_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "AVIF": "image/avif",
}
RAW_HEADERS = {
    "Cache-Control": "private, max-age=3600",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def add_routes(app: web.Application) -> None:
    for path in ASSETS:
        app.router.add_get(path, asset)
    app.router.add_get("/v1/images/{sha256}/raw", raw_image)


async def asset(request: web.Request) -> web.Response:
    """One file of the page; no key is needed for it (the data it shows needs one)."""
    name, content_type = ASSETS[request.match_info.route.resource.canonical]  # type: ignore[union-attr]
    body = await in_thread((STATIC_DIR / name).read_bytes)
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=PAGE_HEADERS)


async def raw_image(request: web.Request) -> web.Response:
    """The stored bytes of an image this key's tenant has seen (scope reports:read)."""
    key = require_scope(request, "reports:read")
    sha256 = request.match_info["sha256"].lower()
    if len(sha256) != 64 or not set(sha256) <= SHA256_HEX:
        raise Problem(404, "image_not_found", "an image is named by the 64 hex digits of its sha256")
    data, fmt = await in_thread(_stored_bytes, request, key.tenant_id, sha256)
    content_type = IMAGE_TYPES.get(fmt.upper(), "application/octet-stream")
    return web.Response(body=data, headers={**RAW_HEADERS, "Content-Type": content_type})


def _stored_bytes(request: web.Request, tenant_id: int, sha256: str) -> tuple[bytes, str]:
    with services(request).sessions() as session:  # type: ignore[misc]
        found = queries.image_seen_by(session, tenant_id, sha256)
        blob = session.get(ImageBlob, found[0].id) if found is not None else None
        if found is None or blob is None:
            raise Problem(404, "image_not_found", f"this key's tenant has not submitted the image {sha256}")
        return bytes(blob.data), found[0].format
