"""Requests that used to leak or stall: a valid API key followed by a control byte in ``Authorization`` (aiohttp
logged the whole header at ERROR and echoed it in its 400), and multipart bodies of many small fields (one key
held the event loop for everyone).  Raw sockets against the app on a real socket, and a real `scanner serve`."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from scanner import logsafe
from scanner.db import keys, migrate
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from tests.support.api import RunningApi, http, start_api
from tests.support.commands import SCANNER
from tests.support.logscan import FULL_KEY, leaked_keys, rendered
from tests.support.servers import free_port
from tests.support.waiting import wait_for

CONTROL_BYTES = [b"\x01", b"\x7f", b"\x00", b"\x0b"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("hostile"), engine_threads=1, max_images_per_scan=8)
    running = start_api(settings)
    yield running
    running.stop()


def address(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def exchange(where: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(where, timeout=60) as sock:
        sock.sendall(data)
        received = []
        while chunk := sock.recv(65536):
            received.append(chunk)
    return b"".join(received)


def with_control_byte(key: str, byte: bytes) -> bytes:
    return b"GET /v1/me HTTP/1.1\r\nHost: scanner\r\nAuthorization: Bearer " + key.encode() + byte + b"\r\n\r\n"


def secret_of(key: str) -> str:
    return key.rsplit("_", 1)[1]


# --- 1. a key in a malformed header ----------------------------------------------------------------------------


@pytest.mark.parametrize("byte", CONTROL_BYTES, ids=["soh", "del", "nul", "vt"])
def test_a_key_followed_by_a_control_byte_is_refused_without_echo_or_log(
    api: RunningApi, caplog: pytest.LogCaptureFixture, byte: bytes
) -> None:
    key = api.new_key("leaky")
    assert http("GET", f"{api.base}/v1/me", key).status == 200  # the key itself is valid
    reply = exchange(address(api.base), with_control_byte(key, byte))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", reply
    assert json.loads(body)["code"] == "malformed_request"
    assert secret_of(key).encode() not in reply
    logged = "\n".join(rendered(record) for record in caplog.records)
    assert secret_of(key) not in logged
    assert "refused a malformed request" in logged
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.ERROR]


@pytest.mark.slow
def test_scanner_serve_writes_no_key_to_its_log(tmp_path: Path) -> None:
    """The real server process, its log as an operator sees it (stderr): four malformed headers, each after a
    valid key, and not one line holding the key's secret."""
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    migrate.upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    with transaction(make_sessionmaker(engine)) as session:
        key = keys.create_key(session, "operator").token
    engine.dispose()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    env.update(SCANNER_DATA_DIR=str(data), SCANNER_ENGINE_THREADS="1", OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [SCANNER, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: _healthz(port), 120, 0.2, "scanner serve")
        replies = [exchange(("127.0.0.1", port), with_control_byte(key, byte)) for byte in CONTROL_BYTES]
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=60)
    assert all(reply.startswith(b"HTTP/1.0 400") for reply in replies), replies
    assert not any(secret_of(key).encode() in reply for reply in replies)
    assert secret_of(key) not in output and not FULL_KEY.search(output)
    assert output.count("refused a malformed request") == len(CONTROL_BYTES), output


def _healthz(port: int) -> bool:
    try:
        return b" 200 " in exchange(("127.0.0.1", port), b"GET /healthz HTTP/1.0\r\n\r\n")[:20]
    except OSError:
        return False


def test_the_log_filter_redacts_keys_in_messages_arguments_and_tracebacks() -> None:
    """Whatever else might log a key one day: the filter that `scanner serve` puts on every handler."""
    key = "rsk_0123456789ab_" + "S" * 43
    logger = logging.getLogger("tests.logsafe")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        assert logsafe.install() >= 1 and any(isinstance(f, logsafe.RedactKeys) for f in handler.filters)
        logger.warning("header %r", f"Bearer {key}\x01")
        logger.warning(f"in the message {key}")
        try:
            raise ValueError(f"b'Authorization: Bearer {key}\\x7f'")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "S" * 10 not in written and not leaked_keys([logging.makeLogRecord({"msg": written})])
    assert written.count("rsk_0123456789ab_***") == 3  # the key's id stays: it says which key, not its secret
    assert "ValueError" in written and "Traceback" in written


# --- 2. many small parts -----------------------------------------------------------------------------------------

BOUNDARY = "hostile-boundary"


def part(disposition: str, content: bytes = b"v") -> bytes:
    return f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode() + content + b"\r\n"


def unfinished_upload(key: str, parts: list[bytes], declared: int) -> bytes:
    """A POST /v1/scans head declaring ``declared`` body bytes, and the first parts of that body only."""
    head = (
        f"POST /v1/scans HTTP/1.1\r\nHost: scanner\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n"
    )
    return head.encode() + b"".join(parts)


def answer(sock: socket.socket) -> tuple[int, dict]:
    """The status and problem document of the response on ``sock`` (read until the end of its JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a full answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_a_body_of_many_ignored_fields_is_refused_at_once_and_healthz_answers_meanwhile(api: RunningApi) -> None:
    """200,000 small text fields that no one reads (12.5 MB, under the body cap) used to be read one by one,
    holding the event loop for about a minute.  Here only the first 50,000 are sent, and the body is left
    unfinished: the refusal has to come from what was read, and /healthz has to answer while that upload is
    still open."""
    key = api.new_key("stalling")
    fields = [part(f'name="f{index}"') for index in range(200_000)]
    declared = sum(map(len, fields)) + len(f"--{BOUNDARY}--\r\n")
    with socket.create_connection(address(api.base), timeout=60) as upload:
        upload.sendall(unfinished_upload(key, fields[:50_000], declared))
        health = exchange(address(api.base), b"GET /healthz HTTP/1.0\r\n\r\n")
        status, problem = answer(upload)  # the body is still unfinished
    assert health.startswith(b"HTTP/1.1 200") or health.startswith(b"HTTP/1.0 200"), health[:200]
    assert (status, problem["code"]) == (422, "unknown_field"), problem
    assert "f0" in problem["detail"]


@pytest.mark.parametrize(
    ("parts", "code"),
    [
        ([part('name="source"', b"api"), part('name="source"', b"api")], "duplicate_field"),
        ([part('name="image"; filename="a.png"', b"x") for _ in range(9)], "too_many_images"),  # the cap is 8
        ([part('name="image"; filename="a.png"', b"x"), part('name="comment"', b"hi")], "unknown_field"),
    ],
    ids=["twice", "over-the-image-cap", "unknown-after-an-image"],
)
def test_parts_past_the_caps_are_refused_before_the_rest_is_sent(
    api: RunningApi, parts: list[bytes], code: str
) -> None:
    key = api.new_key("caps")
    # aiohttp reads a part in 256 KiB chunks and finds its end only with more bytes after those: a big part
    # more, never reached
    trailer = part('name="image"; filename="more.png"', b"x" * (1024 * 1024))
    with socket.create_connection(address(api.base), timeout=60) as upload:
        upload.sendall(unfinished_upload(key, [*parts, trailer], 10 * 1024 * 1024))
        status, problem = answer(upload)
    assert (status, problem["code"]) == (422, code), problem


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # five hundred thousand one-character URLs: about 2.6 MB, under the 64 MiB body cap, past what 8 URLs need
        ("/v1/scans", {"image_urls": ["a"] * 500_000}),
        ("/v1/audits", {"start_url": "https://1.1.1.1/", "every": "6h", "include": ["a"] * 200_000}),
    ],
    ids=["scan", "audit"],
)
def test_a_json_body_is_capped_at_what_the_route_can_need(api: RunningApi, path: str, body: dict) -> None:
    """pydantic parses JSON holding the GIL, so the event loop waits for it: the size parsed is what bounds
    that wait (25 MB of tiny list items held it 2.9 s), and it is refused before parsing."""
    key = api.new_key("json")
    reply = http("POST", api.base + path, key, data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert reply.status == 413 and reply.json()["code"] == "body_too_large", reply.body[:300]
