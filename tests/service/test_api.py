"""The API on a real socket in embedded mode (SQLite file, in-process analysis with the bundled models):
submission and verdicts, known verdicts at once, events, images, authentication, limits, CORS, tenants."""

from __future__ import annotations

import datetime as dt
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scanner.settings import Settings
from tests.support.api import RunningApi, http, start_api, upload
from tests.support.images import random_png
from tests.support.waiting import wait_for
from worker.engine import load_engine

RNG = np.random.default_rng(7)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming 10 gigapixels, with a tiny (truncated) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


@pytest.fixture(scope="module")
def engine():  # noqa: ANN201 - worker.engine.Engine
    settings = Settings()
    return load_engine(str(settings.robust_bundle), str(settings.standard_bundle), threads=1)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, engine) -> Iterator[RunningApi]:  # noqa: ANN001
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("api"),
        rate_limit_per_minute=100_000,
        rate_limit_burst=100_000,
        max_images_per_scan=8,
        max_body_bytes=2_000_000,
        max_image_bytes=300_000,
    )
    running = start_api(settings, engine)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def key(api: RunningApi) -> str:
    return api.new_key("tests", "acme")


def wait_done(api: RunningApi, key: str, scan_id: str) -> dict:
    def finished() -> dict | None:
        document = http("GET", f"{api.base}/v1/scans/{scan_id}", key).json()
        return document if document["status"] == "done" else None

    return wait_for(finished, 60, 0.1, f"scan {scan_id}")


def test_an_uploaded_image_gets_a_verdict_and_the_same_bytes_are_answered_at_once(api: RunningApi, key: str) -> None:
    image = random_png(1)
    reply = http("POST", f"{api.base}/v1/scans", key, data=upload(image, page_url="https://shop.example/p/1"))
    assert reply.status == 202, reply.body
    scan = reply.json()
    assert reply.headers["Location"] == f"/v1/scans/{scan['id']}"
    assert scan["status"] == "queued" and scan["counts"]["pending"] == 1
    done = wait_done(api, key, scan["id"])
    verdict = done["items"][0]["verdict"]
    assert done["items"][0]["state"] == "done" and done["finished_at"] is not None
    classes = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}
    # Random noise shows none of the ten classes: the domain gate says so (no label), and the model's guess is
    # still returned, ranked, as top_k.
    assert verdict["label"] is None and verdict["in_domain"] < 0.5
    assert verdict["top_k"][0][0] in classes
    assert 0 < verdict["confidence"] <= 1 and verdict["model_version"] == scan["model_version"]
    assert isinstance(verdict["flagged"], bool) and set(verdict["timings_ms"]) >= {"inference", "detection"}

    again = http("POST", f"{api.base}/v1/scans", key, data=upload(image))
    assert again.status == 201  # known verdict: answered without analysis
    assert again.json()["status"] == "done"
    assert again.json()["items"][0]["verdict"] == verdict


def test_a_scan_mixes_accepted_and_refused_images_and_keeps_going(api: RunningApi, key: str) -> None:
    reply = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(2), b"not an image", png_bomb(), b""))
    assert reply.status == 202
    items = wait_done(api, key, reply.json()["id"])["items"]
    assert [item["state"] for item in items] == ["done", "failed", "failed", "failed"]
    assert [item["error"]["code"] for item in items[1:]] == ["unsupported_format", "too_many_pixels", "empty"]


def test_an_oversized_image_is_refused_but_the_body_is_read(api: RunningApi, key: str) -> None:
    big = bytes(400_000)  # over max_image_bytes (300 kB), under the body cap
    reply = http("POST", f"{api.base}/v1/scans", key, data=upload(big, random_png(3)))
    assert reply.status == 202
    items = wait_done(api, key, reply.json()["id"])["items"]
    assert items[0]["error"]["code"] == "too_many_bytes" and items[1]["state"] == "done"


def test_request_level_refusals_are_problem_documents(api: RunningApi, key: str) -> None:
    cases = [
        (dict(data=upload(bytes(2_100_000))), 413, "body_too_large"),
        (dict(data=upload(*[random_png(10 + i) for i in range(9)])), 422, "too_many_images"),
        (dict(data=b"x", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 422, "invalid_body"),
        (dict(json={"image_urls": []}), 422, "invalid_body"),
        (
            dict(json={"image_urls": ["https://a.example/x.png"], "page_url": "javascript:alert(1)"}),
            422,
            "invalid_page_url",
        ),
    ]
    for kwargs, status, code in cases:
        reply = http("POST", f"{api.base}/v1/scans", key, **kwargs)
        assert reply.status == status, (code, reply.body)
        assert reply.headers["Content-Type"].startswith("application/problem+json")
        assert reply.json()["code"] == code and reply.json()["status"] == status


def test_image_urls_to_private_addresses_are_refused_per_item(api: RunningApi, key: str) -> None:
    urls = [
        "http://127.0.0.1:9/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:10.0.0.1]/a.png",
        "file:///etc/passwd",
        "http://0.0.0.0/x.png",
    ]
    reply = http("POST", f"{api.base}/v1/scans", key, json={"image_urls": urls, "source": "extension"})
    assert reply.status in (201, 202)
    items = reply.json()["items"]
    assert [item["error"]["code"] for item in items] == [
        "blocked_address",
        "blocked_address",
        "blocked_address",
        "bad_url",
        "blocked_address",
    ]


def test_authentication_failures(api: RunningApi, key: str) -> None:
    url = f"{api.base}/v1/scans/whatever"
    expired = api.new_key("old", "acme", expires_in=dt.timedelta(seconds=-1))
    revoked = api.new_key("gone", "acme")
    assert http("POST", f"{api.base}/v1/scans", revoked, json={"image_urls": ["https://a.example/a.png"]}).status in (
        201,
        202,
    )
    from scanner.db import keys as keys_module
    from scanner.db.session import make_engine, make_sessionmaker, transaction

    with transaction(make_sessionmaker(make_engine(api.settings.db_url))) as session:
        assert keys_module.revoke(session, revoked.split("_")[1])
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    for token, code in [
        (None, "missing_key"),
        ("nonsense", "invalid_key"),
        (tampered, "invalid_key"),
        (expired, "expired_key"),
        (revoked, "revoked_key"),
    ]:
        reply = http("GET", url, token)
        assert reply.status == 401 and reply.json()["code"] == code, (code, reply.body)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")


def test_scopes_are_enforced(api: RunningApi) -> None:
    reader = api.new_key("reader", "acme", scopes=("reports:read",))
    reply = http("POST", f"{api.base}/v1/scans", reader, data=upload(random_png(4)))
    assert reply.status == 403 and reply.json()["code"] == "insufficient_scope"
    assert http("GET", f"{api.base}/v1/reports/flagged", reader).status == 200


def test_tenants_never_see_each_other(api: RunningApi, key: str) -> None:
    image = random_png(5)
    scan = http("POST", f"{api.base}/v1/scans", key, data=upload(image, page_url="https://acme.example/")).json()
    wait_done(api, key, scan["id"])
    sha = scan["items"][0]["sha256"]
    other = api.new_key("rival", "globex")
    assert http("GET", f"{api.base}/v1/scans/{scan['id']}", other).json()["code"] == "scan_not_found"
    assert http("GET", f"{api.base}/v1/images/{sha}", other).status == 404
    assert http("GET", f"{api.base}/v1/images/{sha}", key).json()["sightings"] == 1

    # The rival meets the same bytes: its scan waits like a new one (a 201 would tell it someone else submitted
    # them; see test_tenant_privacy), and it sees only its own sightings.
    theirs = http("POST", f"{api.base}/v1/scans", other, data=upload(image, page_url="https://globex.example/"))
    assert theirs.status == 202
    wait_done(api, other, theirs.json()["id"])
    seen = http("GET", f"{api.base}/v1/images/{sha}", other).json()
    assert seen["sightings"] == 1 and seen["recent_sightings"][0]["site"] == "globex.example"


def test_image_document(api: RunningApi, key: str) -> None:
    image = random_png(6, (64, 48))
    for page in ("https://a.example/1", "https://b.example/2"):
        scan = http("POST", f"{api.base}/v1/scans", key, data=upload(image, page_url=page)).json()
        wait_done(api, key, scan["id"])
    sha = scan["items"][0]["sha256"]
    document = http("GET", f"{api.base}/v1/images/{sha}", key).json()
    assert (document["width"], document["height"], document["format"]) == (64, 48, "PNG")
    assert document["byte_size"] == len(image) and document["sightings"] == 2
    assert [s["site"] for s in document["recent_sightings"]] == ["b.example", "a.example"]
    assert len(document["verdicts"]) == 1
    assert http("GET", f"{api.base}/v1/images/{'0' * 64}", key).json()["code"] == "image_not_found"
    assert http("GET", f"{api.base}/v1/images/not-a-hash", key).status == 404


def test_scan_events_stream_items_then_done(api: RunningApi, key: str) -> None:
    scan = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(7), random_png(8), b"junk")).json()
    reply = http("GET", f"{api.base}/v1/scans/{scan['id']}/events", key)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    events = [block.split("\n") for block in reply.body.decode().strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names.count("item") == 3 and names[-1] == "done" and "progress" in names
    final = json.loads(events[-1][1].removeprefix("data: "))
    assert final["counts"] == {"total": 3, "pending": 0, "done": 2, "failed": 1, "flagged": final["counts"]["flagged"]}


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, engine) -> None:  # noqa: ANN001
    settings = Settings(data_dir=tmp_path, rate_limit_per_minute=60, rate_limit_burst=3)
    running = start_api(settings, engine)
    try:
        token = running.new_key()
        statuses = [http("GET", f"{running.base}/v1/reports/flagged", token).status for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
        reply = http("GET", f"{running.base}/v1/reports/flagged", token)
        assert reply.json()["code"] == "rate_limited" and int(reply.headers["Retry-After"]) >= 1
        # Another key has its own bucket.
        assert http("GET", f"{running.base}/v1/reports/flagged", running.new_key("b")).status == 200
    finally:
        running.stop()


def test_cors_for_the_extension_origin_only(api: RunningApi, key: str) -> None:
    preflight = {
        "Origin": "chrome-extension://abcdefghijklmnop",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    reply = http("OPTIONS", f"{api.base}/v1/scans", headers=preflight)
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == "chrome-extension://abcdefghijklmnop"
    assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]
    evil = http("OPTIONS", f"{api.base}/v1/scans", headers={**preflight, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers
    # Actual requests carry the header too, errors included.
    reply = http("GET", f"{api.base}/v1/scans/nope", key, headers={"Origin": "moz-extension://1234"})
    assert reply.status == 404 and reply.headers["Access-Control-Allow-Origin"] == "moz-extension://1234"


def test_health_metrics_and_openapi(api: RunningApi, key: str) -> None:
    health = http("GET", f"{api.base}/healthz").json()
    assert health["status"] == "ok" and health["mode"] == "embedded" and health["database"] is True
    http("GET", f"{api.base}/v1/scans/missing", key)
    metrics = http("GET", f"{api.base}/metrics").body.decode()
    assert 'scanner_http_requests_total{method="GET",route="/v1/scans/{scan_id}",status="404"}' in metrics
    assert 'scanner_refusals_total{code="scan_not_found"}' in metrics
    document = http("GET", f"{api.base}/openapi.json").json()
    assert "/v1/scans" in document["paths"]


def test_unknown_routes_and_methods_are_problems(api: RunningApi, key: str) -> None:
    assert http("GET", f"{api.base}/nowhere").json()["code"] == "not_found"
    reply = http("DELETE", f"{api.base}/v1/scans", key)
    assert reply.status == 405 and reply.json()["code"] == "method_not_allowed"


def test_work_accepted_before_a_restart_is_finished_after_it(tmp_path: Path, engine) -> None:  # noqa: ANN001
    """Embedded mode: images pending in the database when the server starts (it stopped or crashed before
    analysing them) are analysed at start-up."""
    import hashlib

    from scanner.api.intake import Entry, Submission, record
    from scanner.db import keys, migrate
    from scanner.db.session import make_engine, make_sessionmaker, transaction
    from scanner.versions import served_versions

    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings.db_url)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    with transaction(sessions) as session:
        tenant_id = keys.get_or_create_tenant(session, "acme").id
    entries = []
    for seed in (31, 32):
        data = random_png(seed)
        entries.append(
            Entry(
                filename="x.png", data=data, sha256=hashlib.sha256(data).hexdigest(), format="PNG", width=40, height=32
            )
        )
    scan_id, pending = record(sessions, tenant_id, Submission("api", None, entries), served_versions(settings))
    assert len(pending) == 2
    running = start_api(settings, engine)
    try:
        token = running.new_key("k", "acme")
        assert wait_done(running, token, scan_id)["counts"]["done"] == 2
    finally:
        running.stop()


def test_uploads_can_say_where_each_file_came_from(api: RunningApi, key: str) -> None:
    urls = ["https://cdn.example/a.png", None]
    form = upload(random_png(41), random_png(42), page_url="https://cdn.example/page", image_urls=json.dumps(urls))
    scan = http("POST", f"{api.base}/v1/scans", key, data=form).json()
    assert [item["image_url"] for item in scan["items"]] == urls
    mismatched = upload(random_png(43), image_urls=json.dumps(["https://a.example/1", "https://a.example/2"]))
    reply = http("POST", f"{api.base}/v1/scans", key, data=mismatched)
    assert reply.status == 422 and reply.json()["code"] == "invalid_body"
    broken = http(
        "POST", f"{api.base}/v1/scans", key, data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}
    )  # no boundary
    assert broken.status == 422 and broken.json()["code"] == "invalid_body"


def test_a_key_can_check_itself(api: RunningApi) -> None:
    token = api.new_key("ext", "acme", scopes=("scans:write",))
    me = http("GET", f"{api.base}/v1/me", token).json()
    assert me["tenant"] == "acme" and me["name"] == "ext" and me["scopes"] == ["scans:write"]
    assert token.split("_")[1] == me["id"] and "secret" not in json.dumps(me)


def test_false_flag_feedback_reaches_the_api(api: RunningApi, key: str) -> None:
    scan = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(51))).json()
    sha = scan["items"][0]["sha256"]
    body = {"kind": "false_flag", "page_url": "https://shop.example/p", "note": "a product photo"}
    reply = http("POST", f"{api.base}/v1/images/{sha}/feedback", key, json=body)
    assert reply.status == 201 and reply.json()["kind"] == "false_flag"
    assert reply.json()["model_version"] == scan["model_version"]
    assert http("GET", f"{api.base}/v1/images/{sha}", key).json()["feedback"] == {"false_flag": 1}
    assert http("POST", f"{api.base}/v1/images/{sha}/feedback", key, json={"kind": "maybe"}).status == 422
    rival = api.new_key("rival", "globex")
    assert http("POST", f"{api.base}/v1/images/{sha}/feedback", rival, json=body).status == 404
