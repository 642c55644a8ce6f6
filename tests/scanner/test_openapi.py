"""The OpenAPI document: it is what ``scanner.api.openapi`` generates, it is valid, it names every route, and the
API, running on a real socket, answers as it says (schemathesis property tests)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import schemathesis
import torch
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

from scanner.api import create_app, openapi
from scanner.db import keys, migrate
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings

# Only the committed document is served; drift from the generator is test_committed_document_is_generated's job.
schema = schemathesis.openapi.from_path(openapi.OPENAPI_PATH)
# The tests send a valid key themselves (the ignored_auth check still tries none and a wrong one), and the API
# ignores query parameters it does not know, as the document does not forbid them.
schema.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
REQUEST_TIMEOUT_S = 30


@schema.hook
def map_case(context, case):
    """A multipart body's image_urls must name one URL per file part, which a schema cannot say: valid bodies
    generated with that field get a list of the right length."""
    body = case.body
    info = case.meta.components.get(ParameterLocation.BODY) if case.meta is not None else None
    positive = info is None or info.mode == GenerationMode.POSITIVE
    if case.media_type == "multipart/form-data" and isinstance(body, dict) and "image_urls" in body and positive:
        images = body.get("image")
        count = len(images) if isinstance(images, list) else 1
        case.body = {**body, "image_urls": json.dumps([f"https://example.org/{i}.png" for i in range(count)])}
    return case


@schema.hook
def filter_case(context, case) -> bool:
    """Leave out multipart bodies with ESC or DEL in a field name: urllib3 1.26 percent-encodes the other control
    characters of a part name but sends these two raw in the part's header, which is no valid HTTP (RFC 9110)."""
    if case.media_type == "multipart/form-data" and isinstance(case.body, dict):
        return not any("\x1b" in name or "\x7f" in name for name in case.body)
    return True


def _settings(data_dir: Path, database_url: str | None = None) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        rate_limit_per_minute=100000,
        rate_limit_burst=100000,
        auth_failures_per_minute=100000,  # schemathesis tries wrong keys on every operation
        auth_failures_burst=100000,
        fetch_timeout_s=2,
        engine_threads=1,
    )


# --- the document -------------------------------------------------------------------------------------------------


def test_committed_document_is_generated():
    committed = openapi.OPENAPI_PATH.read_text(encoding="utf-8")
    assert committed == openapi.render(openapi.build_document()), (
        "scanner/api/openapi.json is out of date: run `python -m scanner.api.openapi`"
    )


def test_document_is_valid_openapi_3_1():
    document = openapi.build_document()
    assert document["openapi"].startswith("3.1.")
    assert (document["info"]["title"], document["info"]["version"]) == ("Robust image scanner API", "1")
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    broken = {**document, "info": {"version": "1"}}  # the validation does reject an invalid document
    with pytest.raises(Exception, match="title"):
        schemathesis.openapi.from_dict(broken).validate()


def test_check_command(tmp_path, capsys):
    target = tmp_path / "openapi.json"
    assert openapi.main(["--check", "--output", str(target)]) == 1
    assert openapi.main(["--output", str(target)]) == 0
    assert openapi.main(["--check", "--output", str(target)]) == 0
    assert json.loads(target.read_text()) == openapi.build_document()
    assert target.read_text().endswith("}\n")
    target.write_text(target.read_text().replace('"version": "1"', '"version": "2"'))
    assert openapi.main(["--check", "--output", str(target)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_every_route_is_documented_and_nothing_else(tmp_path):
    app = create_app(_settings(tmp_path))
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        routes.add((route.resource.canonical, route.method.lower()))  # type: ignore[union-attr]
    # aiohttp answers HEAD for every GET route by itself; OpenAPI leaves HEAD implicit too.
    heads = {(path, "get") for path, method in routes if method == "head"}
    assert heads <= routes
    routes -= {(path, method) for path, method in routes if method == "head"}
    document = openapi.build_document()
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == documented


def test_security_is_required_exactly_on_v1():
    for path, item in openapi.build_document()["paths"].items():
        for method, operation in item.items():
            expected = [{"bearerAuth": []}] if path.startswith("/v1/") else []
            assert operation["security"] == expected, (method, path)
            if path.startswith("/v1/"):
                assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)


# --- the API on a socket ----------------------------------------------------------------------------------------


@dataclass
class Server:
    base_url: str
    key: str
    other_keys: dict[str, str]  # "scans_only", "expired"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def server(request, tmp_path_factory) -> Iterator[Server]:
    """The API in embedded mode (bundled models) on 127.0.0.1, served by its own loop in a thread; once with
    SQLite and once with PostgreSQL, which refuses text SQLite takes (NUL characters)."""
    torch.set_num_threads(1)
    database_url = request.getfixturevalue("postgres_databases")() if request.param == "postgresql" else None
    config = _settings(tmp_path_factory.mktemp("openapi"), database_url)
    migrate.upgrade(config.db_url)
    engine = make_engine(config.db_url)
    with transaction(make_sessionmaker(engine)) as session:
        token = keys.create_key(session, "schemathesis").token
        others = {
            "scans_only": keys.create_key(session, "scans only", scopes=("scans:write",)).token,
            "expired": keys.create_key(session, "expired", expires_in=dt.timedelta(seconds=-1)).token,
        }
    engine.dispose()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="api-server", daemon=True)
    thread.start()
    runner = web.AppRunner(create_app(config))

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    try:
        base_url = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=180)
        yield Server(base_url, token, others)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@pytest.mark.slow  # generated cases for every operation, on both databases: about a minute in all
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_api_conforms_to_document(case, server):
    response = case.call(base_url=server.base_url, headers=server.headers, timeout=REQUEST_TIMEOUT_S)
    case.validate_response(response, excluded_checks=_refused_by_the_network_rules(case, response))


# An audit's start URL that the schema allows may still name an address or port the fetcher refuses (0.0.0.0,
# a name resolving to loopback), and a string may be no valid RE2 pattern: those 422s are documented, but no
# schema can say which strings earn them.
UNSCHEMATISABLE_REFUSALS = {"bad_url", "blocked_address", "blocked_port", "invalid_pattern", "schedule_too_frequent"}


def _refused_by_the_network_rules(case, response) -> list:
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    audit = case.operation.label == "POST /v1/audits" and response.status_code == 422
    return [positive_data_acceptance] if audit and response.json().get("code") in UNSCHEMATISABLE_REFUSALS else []


def _png(seed: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (32, 32), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_scan_lifecycle_conforms_to_document(server):
    """What random inputs do not reach: a scan with a real image, followed until it is analysed, the image, its
    event stream and the report in both formats."""
    call = {"base_url": server.base_url, "headers": server.headers, "timeout": REQUEST_TIMEOUT_S}
    upload = schema["/v1/scans"]["POST"].Case(
        body={
            "image": [_png(1), b"not an image"],
            "page_url": "https://example.org/page",
            "source": "audit",
            "image_urls": json.dumps(["https://example.org/1.png", None]),
        },
        media_type="multipart/form-data",
    )
    response = upload.call_and_validate(**call)
    assert response.status_code == 202, response.text
    scan = response.json()
    assert scan["counts"]["total"] == 2 and scan["counts"]["failed"] == 1
    assert [item["image_url"] for item in scan["items"]] == ["https://example.org/1.png", None]
    assert response.headers["location"] == [f"/v1/scans/{scan['id']}"]

    get_scan = schema["/v1/scans/{scan_id}"]["GET"]
    deadline = time.monotonic() + 60
    while scan["status"] != "done":
        assert time.monotonic() < deadline, scan
        time.sleep(0.2)
        scan = get_scan.Case(path_parameters={"scan_id": scan["id"]}).call_and_validate(**call).json()
    item = scan["items"][0]
    assert item["state"] == "done" and item["verdict"] is not None

    events = schema["/v1/scans/{scan_id}/events"]["GET"].Case(path_parameters={"scan_id": scan["id"]})
    # schemathesis reads event streams with urllib3 2's read1, which the installed urllib3 1.26 lacks: the stream
    # (finite, the scan is done) is read here and then validated.
    stream = requests.get(f"{server.base_url}/v1/scans/{scan['id']}/events", headers=server.headers, timeout=30)
    events.validate_response(stream, headers=server.headers, transport_kwargs=call)
    names = [line.removeprefix("event: ") for line in stream.text.splitlines() if line.startswith("event: ")]
    assert names[-1] == "done" and names.count("item") == 2

    again = schema["/v1/scans"]["POST"].Case(body={"image": [_png(1)]}, media_type="multipart/form-data")
    response = again.call_and_validate(**call)
    assert response.status_code == 201, response.text  # the image is known: done at once

    image = schema["/v1/images/{sha256}"]["GET"].Case(path_parameters={"sha256": item["sha256"].upper()})
    found = image.call_and_validate(**call).json()
    assert found["sha256"] == item["sha256"] and found["sightings"] == 2 and found["verdicts"]

    report = schema["/v1/reports/flagged"]["GET"]
    for query in ({"limit": 1}, {"format": "csv", "min_score": -1e9, "since": "2000-01-01T00:00:00Z"}):
        report.Case(query=query).call_and_validate(**call)


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        (None, 401, "missing_key"),
        ("rsk_not_a_key", 401, "invalid_key"),
        ("expired", 401, "expired_key"),
        ("scans_only", 403, "insufficient_scope"),
    ],
)
def test_refusals_conform_to_document(server, key, status, code):
    """The authentication middleware's answers (the ignored_auth check covers only missing and invalid keys)."""
    headers = {} if key is None else {"Authorization": f"Bearer {server.other_keys.get(key, key)}"}
    operation = schema["/v1/images/{sha256}"]["GET"]
    response = requests.get(f"{server.base_url}/v1/images/{'0' * 64}", headers=headers, timeout=REQUEST_TIMEOUT_S)
    assert (response.status_code, response.json()["code"]) == (status, code)
    operation.validate_response(response)


# --- requests that once broke the API (found by schemathesis) --------------------------------------------------


MULTIPART = {"Content-Type": "multipart/form-data; boundary=b"}
JSON = {"Content-Type": "application/json"}
REPORT = "/v1/reports/flagged"


@pytest.mark.parametrize(
    ("method", "path", "url", "headers", "body", "status"),
    [
        pytest.param(
            "POST", "/v1/scans", "/v1/scans", {"Content-Type": "multipart/form-data"}, b"", 422, id="no-boundary"
        ),
        pytest.param(
            "POST",
            "/v1/scans",
            "/v1/scans",
            MULTIPART,
            b"--b\r\n725--b--\r\n",
            422,
            id="broken-part-header",
        ),
        pytest.param(
            "POST",
            "/v1/scans",
            "/v1/scans",
            MULTIPART,
            b'--b\r\nContent-Disposition: form-data; name="a\x7fb"\r\n\r\nv\r\n--b--\r\n',
            422,
            id="control-character-in-part-name",
        ),
        pytest.param(
            "POST",
            "/v1/scans",
            "/v1/scans",
            JSON,
            b'{"page_url": "http://[", "image_urls": ["https://example.org/a.png"]}',
            422,
            id="page-url-unclosed-bracket",
        ),
        pytest.param(
            "POST",
            "/v1/scans",
            "/v1/scans",
            JSON,
            '{"page_url": "http://a\uff03b/", "image_urls": ["https://example.org/a.png"]}'.encode(),
            422,
            id="page-url-nfkc-netloc",
        ),
        pytest.param(
            "GET",
            REPORT,
            f"{REPORT}?since=0001-01-01T00:00:00%2B14:00",
            {},
            None,
            422,
            id="since-before-year-1-in-utc",
        ),
        pytest.param(
            "GET",
            REPORT,
            f"{REPORT}?until=9999-12-31T23:59:59-05:00",
            {},
            None,
            422,
            id="until-after-year-9999-in-utc",
        ),
        pytest.param(
            "GET",
            REPORT,
            f"{REPORT}?cursor=djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5",  # v1:9999999999999999999999
            {},
            None,
            422,
            id="cursor-beyond-int64",
        ),
        pytest.param(
            "GET",
            REPORT,
            f"{REPORT}?limit=%C2%B2",  # "²": str.isdigit() is true, int() refuses it
            {},
            None,
            422,
            id="limit-superscript-digit",
        ),
    ],
)
def test_malformed_requests_are_documented_client_errors(server, method, path, url, headers, body, status):
    """Each of these was a 500 (an exception of aiohttp's multipart reader, urlsplit, datetime.astimezone,
    SQLite's int64 binding or int() of a non-ASCII digit); each is a documented 422 problem."""
    response = requests.request(
        method, server.base_url + url, headers={**server.headers, **headers}, data=body, timeout=REQUEST_TIMEOUT_S
    )
    assert response.status_code == status, response.text
    schema[path][method].validate_response(response)
