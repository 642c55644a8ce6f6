"""Reading a ``POST /v1/scans`` body (JSON image URLs or multipart files) into a ``scanner.intake.Submission``,
under the body, field and count caps; what happens to it then is ``scanner.intake.take``, the one way in for
images that the crawler and the audits use too."""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import urlsplit

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from scanner.api.bodies import read_capped
from scanner.api.problems import Problem
from scanner.api.schemas import ScanRequest
from scanner.api.text import check_text, check_tree, is_clean
from scanner.fetch import MAX_URL_LENGTH
from scanner.intake import Entry, Submission, check_entries, fetch_entries, fetch_policy, record
from scanner.settings import Settings

__all__ = ["Entry", "Submission", "check_entries", "fetch_entries", "fetch_policy", "read_submission", "record"]

MAX_FIELD_BYTES = 1024 * 1024  # a text field of a multipart body (page_url, source, image_urls)
# The only text fields, each at most once; any other is refused at its first byte, so a body holds at most
# max_images_per_scan + 3 parts (200,000 small ignored fields took 54 s of the event loop to read).
USED_FIELDS = frozenset({"page_url", "source", "image_urls"})
MAX_HOST_LENGTH = 253  # a DNS name's longest; the page's host is stored as its site (255 characters)


async def read_submission(request: web.Request, settings: Settings) -> Submission:
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise Problem(413, "body_too_large", f"the body exceeds {settings.max_body_bytes} bytes")
    if request.content_type == "application/json":
        return await _read_json(request, settings)
    if request.content_type == "multipart/form-data":
        return await _read_multipart(request, settings)
    raise Problem(415, "unsupported_media_type", "send application/json (image URLs) or multipart/form-data")


def json_scan_cap(settings: Settings) -> int:
    """The most a valid JSON scan needs: every URL at the fetcher's longest, and room for the rest."""
    return min(settings.max_body_bytes, settings.max_images_per_scan * (MAX_URL_LENGTH + 16) + 64 * 1024)


async def _read_json(request: web.Request, settings: Settings) -> Submission:
    raw = await read_capped(request, json_scan_cap(settings))  # parsing holds the event loop: bound it
    try:
        body = ScanRequest.model_validate_json(raw)
    except ValidationError as err:
        raise Problem(422, "invalid_body", _first_error(err), errors=_errors(err)) from err
    check_tree(body.model_dump())
    _check_count(len(body.image_urls), settings)
    _check_page_url(body.page_url)
    return Submission(body.source, body.page_url, [Entry(image_url=url) for url in body.image_urls])


async def _read_multipart(request: web.Request, settings: Settings) -> Submission:
    try:
        return await _parse_multipart(request, settings)
    except (ValueError, AssertionError, HttpProcessingError) as err:  # no boundary, broken parts or headers
        raise Problem(422, "invalid_body", f"malformed multipart body: {err}") from err


class _BodyBudget:
    """The bytes of the whole body read so far, whatever its framing: a chunked body declares no length, so
    the cap is applied to what is read, and reading stops (413) at the first byte past it."""

    def __init__(self, cap: int) -> None:
        self.cap, self.used = cap, 0

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.cap:
            raise Problem(413, "body_too_large", f"the body exceeds {self.cap} bytes")


async def _parse_multipart(request: web.Request, settings: Settings) -> Submission:
    fields: dict[str, str] = {}
    entries: list[Entry] = []
    budget = _BodyBudget(settings.max_body_bytes)
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        await asyncio.sleep(0)  # parts already buffered are read without yielding: let other requests run
        if not isinstance(part, BodyPartReader):
            raise Problem(422, "invalid_body", "nested multipart bodies are not accepted")
        if part.filename is None:
            name = _known_field(part.name, fields)
            value, too_large = await _read_capped(part, MAX_FIELD_BYTES, budget)
            if too_large:
                raise Problem(413, "body_too_large", f"the field {part.name!r} exceeds {MAX_FIELD_BYTES} bytes")
            fields[name] = _field_text(name, value)
            continue
        _check_count(len(entries) + 1, settings)
        data, too_large = await _read_capped(part, settings.max_image_bytes, budget)
        entry = Entry(filename=check_text(part.filename, "filename")[:255], data=None if too_large else data)
        if too_large:
            entry.error = ("too_many_bytes", f"the image exceeds {settings.max_image_bytes} bytes")
        entries.append(entry)
    if not entries:
        raise Problem(422, "invalid_body", "the multipart body has no file parts (name them 'image')")
    source = fields.get("source", "api")
    if source not in ("extension", "crawl", "audit", "api"):
        raise Problem(422, "invalid_body", f"unknown source {source!r}")
    page_url = fields.get("page_url") or None
    _check_page_url(page_url)
    _attach_image_urls(entries, fields.get("image_urls"))
    return Submission(source, page_url, entries)  # type: ignore[arg-type]


def _known_field(name: str | None, seen: dict[str, str]) -> str:
    """A text part's name, if it is one of the used fields, not seen before: refused before its content is
    read otherwise."""
    if name is None or name not in USED_FIELDS:
        shown = f" {name[:64]!r}" if name is not None and is_clean(name) else ""
        raise Problem(
            422,
            "unknown_field",
            f"unknown text field{shown}: a multipart body holds file parts and the fields"
            f" {', '.join(sorted(USED_FIELDS))}",
        )
    if name in seen:
        raise Problem(422, "duplicate_field", f"the field {name!r} is given more than once")
    return name


def _field_text(name: str | None, value: bytes) -> str:
    try:
        return check_text(value.decode(), name or "field")
    except UnicodeDecodeError as err:
        raise Problem(422, "invalid_text", f"the field {name!r} is not UTF-8") from err


def _attach_image_urls(entries: list[Entry], raw: str | None) -> None:
    """Optional ``image_urls`` field: a JSON list giving, in order, the URL each uploaded file came from (the
    crawler and the extension upload what the browser already fetched, and say where it was)."""
    if raw is None:
        return
    try:
        urls = json.loads(raw)
    except ValueError as err:
        raise Problem(422, "invalid_body", "image_urls must be a JSON list of strings") from err
    if not isinstance(urls, list) or len(urls) != len(entries) or not all(isinstance(url, str | None) for url in urls):
        raise Problem(422, "invalid_body", "image_urls must list one URL (or null) per uploaded file, in order")
    for entry, url in zip(entries, urls, strict=True):
        if url and not _is_image_url(url):
            raise Problem(422, "invalid_body", "each of image_urls must be an absolute http(s) URL or null")
        entry.image_url = url[:4096] if url else None


# The stand-in the crawler reports for an image given as a data: URL (scanner.crawl.images.data_url_label).
DATA_URL_LABEL = re.compile(r"data:image/[a-z0-9.+-]{1,40};sha256=[0-9a-f]{64}")


def _is_image_url(url: str) -> bool:
    """An http(s) URL with a host (stored and exported as given, so nothing else: no formulas, no scripts)."""
    if DATA_URL_LABEL.fullmatch(url):
        return True
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and is_clean(url)
    except ValueError:
        return False


async def _read_capped(part: BodyPartReader, cap: int, budget: _BodyBudget) -> tuple[bytes, bool]:
    """The part's bytes; past ``cap`` the rest is drained (so the next part can be read) and dropped, but every
    byte counts against the body's budget, which ends the request with 413 once it is spent."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(256 * 1024):
        size += len(chunk)
        budget.take(len(chunk))
        if size <= cap:
            chunks.append(chunk)
    return b"".join(chunks), size > cap


def _check_count(count: int, settings: Settings) -> None:
    if count > settings.max_images_per_scan:
        raise Problem(422, "too_many_images", f"at most {settings.max_images_per_scan} images per scan")


def _check_page_url(page_url: str | None) -> None:
    if page_url is None:
        return
    try:
        parts = urlsplit(page_url)
        host = parts.hostname or ""
        valid = parts.scheme in ("http", "https") and 0 < len(host) <= MAX_HOST_LENGTH
    except ValueError:  # an unclosed IPv6 bracket, a netloc that changes under NFKC, ...
        valid = False
    if not valid:
        raise Problem(422, "invalid_page_url", "page_url must be an absolute http(s) URL")


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _errors(err: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in err.errors()]
