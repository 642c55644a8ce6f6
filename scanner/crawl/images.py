"""Getting the bytes of the images a page shows, once per crawl, and applying the size and byte limits.

Where bytes come from, in order: the crawl's image store (seen before, on any page or in the run before a
resume); the browser's own response for the image (``page.on("response")``: the bytes the browser received,
no second request); a fetch through the page's browser context (``context.request``: same cookies and user
agent) for images the browser did not load, such as CSS images of hidden elements or lazy images that never
came into view; ``data:`` URLs are decoded locally (base64 and percent-encoded).

Limits: more than ``max_image_bytes`` is refused before the body is read when Content-Length says so, and
after reading otherwise (the fallback fetch asks for a byte range one past the cap, so a server that honours
Range never sends more). A too-large image is left out of the page's images and counted in
``stats.images_skipped``; so are broken images (4xx/5xx), bodies that are text, and empty ones. Definitive
failures are remembered per URL; network errors and timeouts are not, so a later page may try again.

Icons: ``min_image_size`` keeps an image when its rendered box or its natural size reaches the threshold in
both dimensions. The natural size of CSS images is not exposed by the DOM, so it is read from the bytes'
header with Pillow. An image with no known size at all is kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import re
import warnings
from urllib.parse import unquote, unquote_to_bytes

from PIL import Image
from playwright.async_api import BrowserContext, Page, Response
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from scanner.crawl.extract import Candidate, keep_by_size
from scanner.crawl.imagestore import ImageStore, KnownImage
from scanner.crawl.models import CrawlStats, FoundImage

FETCHES_PER_PAGE = 4
FETCH_TIMEOUT_S = 20.0
TRANSIENT_ERRORS = frozenset({"network_error", "timeout"})
_CONTENT_RANGE_TOTAL = re.compile(r"/\s*(\d+)\s*$")


class ImageUnavailable(Exception):
    """No usable bytes for an image URL; ``code`` says why."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class ResponseCapture:
    """The image responses one page received, by every URL of their redirect chains."""

    def __init__(self, page: Page) -> None:
        self._responses: dict[str, Response] = {}
        page.on("response", self._on_response)

    def _on_response(self, response: Response) -> None:
        request = response.request
        if request.resource_type != "image" or 300 <= response.status < 400:
            return
        hop = request
        while hop is not None:
            self._responses.setdefault(hop.url, response)
            hop = hop.redirected_from

    def get(self, url: str) -> Response | None:
        return self._responses.get(url)


def decode_data_url(url: str, max_bytes: int) -> tuple[bytes, str]:
    """(bytes, media type) of a ``data:image/...`` URL; raises ImageUnavailable."""
    header, comma, payload = url.partition(",")
    params = header[5:].split(";")
    mime = params[0].strip().lower()
    if not comma or not header.lower().startswith("data:") or not mime.startswith("image/"):
        raise ImageUnavailable("bad_data_url")
    if any(p.strip().lower() == "base64" for p in params[1:]):
        text = re.sub(r"\s+", "", unquote(payload))
        if len(text) * 3 // 4 > max_bytes:
            raise ImageUnavailable("too_large")
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ImageUnavailable("bad_data_url") from None
    else:
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ImageUnavailable("too_large")
    return data, mime


def data_url_label(mime: str, sha256: str) -> str:
    """The short stand-in reported for a data: URL."""
    return f"data:{mime};sha256={sha256}"


def natural_size(data: bytes) -> tuple[int | None, int | None]:
    """Width and height from the image header (no decoding of pixels); (None, None) if Pillow can't tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # any unreadable or exotic format (SVG) simply has no known natural size
        return None, None


def _check_body(status: int, headers: dict[str, str], max_bytes: int) -> None:
    if not (200 <= status < 300):
        raise ImageUnavailable(f"http_{status}")
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes and status != 206:
        raise ImageUnavailable("too_large")
    total = _CONTENT_RANGE_TOTAL.search(headers.get("content-range", ""))
    if total and int(total.group(1)) > max_bytes:
        raise ImageUnavailable("too_large")
    if headers.get("content-type", "").lower().startswith("text/"):
        raise ImageUnavailable("not_an_image")


def _check_data(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise ImageUnavailable("too_large")
    if not data:
        raise ImageUnavailable("empty")
    return data


class ImageCollector:
    """Turns a page's image candidates into FoundImages; bytes are fetched and stored once per crawl."""

    def __init__(self, store: ImageStore, stats: CrawlStats, *, max_bytes: int, min_size: int) -> None:
        self._store = store
        self._stats = stats
        self._max_bytes = max_bytes
        self._min_size = min_size
        self._inflight: dict[str, asyncio.Task[KnownImage]] = {}

    async def close(self) -> None:
        """Stop fetches still running (their pages were abandoned)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def collect(
        self, candidates: list[Candidate], capture: ResponseCapture, context: BrowserContext, referer: str
    ) -> list[FoundImage]:
        """The page's images, in page order, de-duplicated by content (the first URL of equal bytes is kept)."""
        gate = asyncio.Semaphore(FETCHES_PER_PAGE)

        async def one(candidate: Candidate) -> FoundImage | None:
            async with gate:
                return await self._image(candidate, capture, context, referer)

        found = await asyncio.gather(*(one(c) for c in candidates))
        images: dict[str, FoundImage] = {}
        for image in found:
            if image is not None:
                images.setdefault(image.sha256, image)
        self._stats.images_found += len(images)
        return list(images.values())

    async def _image(
        self, candidate: Candidate, capture: ResponseCapture, context: BrowserContext, referer: str
    ) -> FoundImage | None:
        rendered = (candidate.width, candidate.height)
        natural = (candidate.natural_width, candidate.natural_height)
        if all(natural) and not keep_by_size(rendered, natural, self._min_size):
            return None  # an icon: no need for its bytes
        known, url = await self._known(candidate.url, capture, context, referer)
        if known.sha256 is None:
            return None
        data = self._store.data(known.sha256)
        if not all(natural) and not keep_by_size(rendered, natural_size(data), self._min_size):
            return None
        return FoundImage(
            url, data, known.sha256, known.content_type, candidate.kind, candidate.width, candidate.height
        )

    async def _known(
        self, url: str, capture: ResponseCapture, context: BrowserContext, referer: str
    ) -> tuple[KnownImage, str]:
        """What the crawl knows about ``url`` (fetching it if need be) and the URL to report."""
        if url.startswith("data:"):
            return self._from_data_url(url)
        known = self._store.lookup(url)
        if known is not None:
            return known, url
        if url not in self._inflight:
            self._inflight[url] = asyncio.ensure_future(self._fetch_and_store(url, capture, context, referer))
            self._inflight[url].add_done_callback(lambda _t, u=url: self._inflight.pop(u, None))
        return await asyncio.shield(self._inflight[url]), url

    def _from_data_url(self, url: str) -> tuple[KnownImage, str]:
        try:
            data, mime = decode_data_url(url, self._max_bytes)
        except ImageUnavailable as exc:
            self._stats.images_skipped += 1
            return KnownImage(None, None, exc.code), url
        sha256 = hashlib.sha256(data).hexdigest()
        label = data_url_label(mime, sha256)
        # The label names the content: a data: URL met before is known by it, neither hashed nor stored again.
        known = self._store.lookup(label)
        return (known or self._remember(label, sha256, data, mime)), label

    def _remember(self, url: str, sha256: str, data: bytes, content_type: str | None) -> KnownImage:
        known, new = self._store.remember(url, sha256, data, content_type)
        if new:
            self._stats.images_unique += 1
            self._stats.bytes += len(data)
        return known

    async def _fetch_and_store(
        self, url: str, capture: ResponseCapture, context: BrowserContext, referer: str
    ) -> KnownImage:
        try:
            data, content_type = await self._fetch(url, capture, context, referer)
        except ImageUnavailable as exc:
            self._stats.images_skipped += 1
            if exc.code in TRANSIENT_ERRORS:
                return KnownImage(None, None, exc.code)
            return self._store.remember_failure(url, exc.code)
        return self._remember(url, hashlib.sha256(data).hexdigest(), data, content_type)

    async def _fetch(
        self, url: str, capture: ResponseCapture, context: BrowserContext, referer: str
    ) -> tuple[bytes, str | None]:
        response = capture.get(url)
        if response is not None:
            headers = await response.all_headers()
            _check_body(response.status, headers, self._max_bytes)
            with contextlib.suppress(PlaywrightError):  # body gone (evicted, page closed): fetch it instead
                return _check_data(await response.body(), self._max_bytes), headers.get("content-type")
        return await self._fetch_via_context(url, context, referer)

    async def _fetch_via_context(self, url: str, context: BrowserContext, referer: str) -> tuple[bytes, str | None]:
        try:
            response = await context.request.get(
                url,
                headers={"Referer": referer, "Range": f"bytes=0-{self._max_bytes}"},
                timeout=FETCH_TIMEOUT_S * 1000,
                max_redirects=3,
                fail_on_status_code=False,
            )
        except PlaywrightTimeoutError:
            raise ImageUnavailable("timeout") from None
        except PlaywrightError:
            raise ImageUnavailable("network_error") from None
        try:
            headers = response.headers
            _check_body(response.status, headers, self._max_bytes)
            return _check_data(await response.body(), self._max_bytes), headers.get("content-type")
        finally:
            with contextlib.suppress(PlaywrightError):
                await response.dispose()
