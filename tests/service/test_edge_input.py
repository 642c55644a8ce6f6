"""What the API reads at its edge, on SQLite and on PostgreSQL: the body cap holds whatever the framing (chunked
bodies declare no length), and text that cannot be stored (NUL, non-UTF-8) is a 4xx problem, never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scanner.settings import Settings
from tests.support.api import RunningApi, http, start_api
from tests.support.images import flat_png

# Below aiohttp's own default cap (client_max_size, 1 MiB), so that a 413 for a body between the two comes from the
# app's max_body_bytes and not from aiohttp's default.
AIOHTTP_DEFAULT_CAP = 1024 * 1024
BODY_CAP = 256 * 1024


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningApi]:
    options: dict[str, Any] = {}
    if request.param == "postgresql":
        options["database_url"] = request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=tmp_path / "data", engine_threads=1, max_body_bytes=BODY_CAP, **options)
    running = start_api(settings)
    yield running
    running.stop()


def _multipart(parts: list[tuple[bytes, bytes]], boundary: str = "edge-test-boundary") -> tuple[bytes, str]:
    """A raw multipart body from (Content-Disposition tail, content) pairs, so headers can hold any bytes."""
    body = b""
    for disposition, content in parts:
        body += f"--{boundary}\r\n".encode() + b"Content-Disposition: form-data; " + disposition + b"\r\n\r\n"
        body += content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post_chunked(url: str, key: str, content_type: str, chunks: Callable[[], Iterator[bytes]]) -> tuple[int, int]:
    """POST a body without Content-Length (chunked); returns the status and how many bytes the client produced
    before the server answered.  A connection dropped before the answer was read raises (aiohttp.ClientError):
    the server must answer, not hang up."""
    produced = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        for chunk in chunks():
            produced += len(chunk)
            yield chunk
            await asyncio.sleep(0)

    async def go() -> int:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
        async with aiohttp.ClientSession() as session, session.post(url, data=body(), headers=headers) as reply:
            return reply.status

    status = asyncio.run(go())
    return status, produced


@pytest.mark.slow  # stopping the API after a refused chunked upload waits out aiohttp's 10 s lingering time
def test_text_fields_sent_chunked_hit_the_body_cap(api: RunningApi) -> None:
    key = api.new_key()
    field = b"x" * (100 * 1024)  # under BODY_CAP alone, over it in threes

    def chunks() -> Iterator[bytes]:
        for name in ("page_url", "source", "image_urls"):  # 300 KiB of the three fields, each under the caps
            yield _multipart([(f'name="{name}"'.encode(), field)])[0].rsplit(b"--edge-test-boundary--", 1)[0]
        yield _multipart([(b'name="image"; filename="a.png"', flat_png(1))])[0]

    status, _ = _post_chunked(api.base + "/v1/scans", key, _multipart([])[1], chunks)
    assert status == 413


@pytest.mark.slow  # stopping the API after a refused chunked upload waits out aiohttp's 10 s lingering time
def test_a_huge_chunked_file_part_is_refused_without_reading_it_all(api: RunningApi) -> None:
    key = api.new_key()
    total = 64 * 1024 * 1024

    def chunks() -> Iterator[bytes]:
        yield b'--edge-test-boundary\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        for _ in range(total // (256 * 1024)):
            yield b"\x00" * (256 * 1024)
        yield b"\r\n--edge-test-boundary--\r\n"

    status, produced = _post_chunked(api.base + "/v1/scans", key, _multipart([])[1], chunks)
    assert status == 413
    assert produced < total, "the server read the whole body before refusing it"


@pytest.mark.slow  # stopping the API after a refused chunked upload waits out aiohttp's 10 s lingering time
def test_a_chunked_json_body_over_the_cap_is_a_413(api: RunningApi) -> None:
    key = api.new_key()
    size = (BODY_CAP + AIOHTTP_DEFAULT_CAP) // 2  # over the app's cap, under aiohttp's default one

    def chunks() -> Iterator[bytes]:
        yield b'{"image_urls": ["http://example.com/a.png"], "page_url": "http://example.com/'
        for _ in range(size // (64 * 1024)):
            yield b"a" * (64 * 1024)
        yield b'"}'

    status, _ = _post_chunked(api.base + "/v1/scans", key, "application/json", chunks)
    assert status == 413


def test_a_non_utf8_filename_is_a_422(api: RunningApi) -> None:
    key = api.new_key()
    body, content_type = _multipart([(b'name="image"; filename="caf\xe9\xff.png"', flat_png(2))])
    reply = http("POST", api.base + "/v1/scans", key, data=body, headers={"Content-Type": content_type})
    assert reply.status == 422, reply.body
    assert reply.json()["code"] == "invalid_body"


def test_nul_characters_are_refused_at_the_edge(api: RunningApi) -> None:
    key = api.new_key()
    scans = api.base + "/v1/scans"
    for body in (
        {"page_url": "http://example.com/\x00", "image_urls": ["http://example.com/a.png"]},
        {"image_urls": ["http://example.com/a\x00.png"]},
        {"image_urls": ["http://example.com/\ud800.png"]},
    ):
        reply = http("POST", scans, key, data=json.dumps(body), headers={"Content-Type": "application/json"})
        assert reply.status == 422 and reply.json()["code"] == "invalid_body", (body, reply.body)
    upload, content_type = _multipart(
        [(b'name="page_url"', b"http://example.com/\x00"), (b'name="image"; filename="a.png"', flat_png(3))]
    )
    reply = http("POST", scans, key, data=upload, headers={"Content-Type": content_type})
    assert reply.status == 422, reply.body
    missing = http("GET", scans + "/%00", key)
    assert missing.status == 404 and missing.json()["code"] == "scan_not_found"
    for name in ("site", "label", "model_version", "calibration_version"):
        reply = http("GET", api.base + f"/v1/reports/flagged?{name}=a%00b", key)
        assert reply.status == 422 and reply.json()["code"] == "invalid_parameter", (name, reply.body)
    audit = {"start_url": "http://example.com/", "every": "6h", "name": "a\x00b", "exclude": ["x\x00"]}
    reply = http("POST", api.base + "/v1/audits", key, json=audit)
    assert reply.status == 422 and reply.json()["code"] == "invalid_body", reply.body
