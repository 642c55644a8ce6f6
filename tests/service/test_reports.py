"""GET /v1/reports/flagged: filters, keyset pagination, CSV, and tenant isolation, over a real socket.

The verdicts are written through the same query functions the worker uses, with chosen scores, so that which
rows must come back is known exactly (the shipped detector flags too few random images to test filters)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator

import pytest

from scanner.db import keys, queries
from scanner.db.models import Sighting
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from scanner.versions import served_versions
from tests.support.api import RunningApi, http, start_api
from tests.support.queries import add_item, record_image, write_verdict
from tests.support.verdicts import verdict_with_score

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def reports_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningApi, dict[str, str]]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("reports"), rate_limit_per_minute=100_000, rate_limit_burst=100_000
    )
    running = start_api(settings, engine=object())  # reads only: the analysis thread never runs
    versions = served_versions(settings)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    tokens = {}
    with transaction(sessions) as session:
        for tenant in ("acme", "globex"):
            tokens[tenant] = keys.create_key(session, "reports", tenant).token
        acme, globex = (keys.get_or_create_tenant(session, name).id for name in ("acme", "globex"))
        # 30 acme images: 20 flagged (scores 1.05 ... 2.0), half on shop.example, labels alternate cat/dog.
        for i in range(30):
            site = "shop.example" if i % 2 == 0 else "blog.example"
            scan = queries.new_scan(
                session, acme, "crawl", f"https://{site}/p{i}", versions.model_version, versions.calibration_version
            )
            image = record_image(session, f"{i:064x}", b"x" * (i + 1), "PNG", 32, 32)
            item = add_item(session, scan, 0, image=image, image_url=f"https://{site}/i{i}.png")
            session.flush()
            for sighting in session.query(Sighting).filter_by(scan_id=scan.id):
                sighting.seen_at = T0 + dt.timedelta(days=i)
            score = 0.05 * (i + 1) if i < 10 else 1.0 + 0.05 * (i - 9)
            write_verdict(
                session,
                image.id,
                verdict_with_score(
                    versions.model_version, versions.calibration_version, "cat" if i % 2 == 0 else "dog", score
                ),
            )
            assert item.image_id == image.id
        # A globex sighting of one flagged acme image, and a globex-only flagged image.
        scan = queries.new_scan(
            session, globex, "api", "https://globex.example/", versions.model_version, versions.calibration_version
        )
        shared = record_image(session, f"{29:064x}", b"x" * 30, "PNG", 32, 32)
        add_item(session, scan, 0, image=shared)
        own = record_image(session, "f" * 64, b"own", "PNG", 32, 32)
        add_item(session, scan, 1, image=own)
        write_verdict(
            session, own.id, verdict_with_score(versions.model_version, versions.calibration_version, "cat", 5.0)
        )
    yield running, tokens
    running.stop()


def _get(api: RunningApi, token: str, **params: str) -> dict:
    reply = http("GET", f"{api.base}/v1/reports/flagged", token, params=params)
    assert reply.status == 200, reply.body
    return reply.json()


def test_flagged_rows_newest_first_with_their_sightings(reports_api) -> None:  # noqa: ANN001
    api, tokens = reports_api
    rows = _get(api, tokens["acme"])["items"]
    assert len(rows) == 20
    assert [row["sha256"] for row in rows] == [f"{i:064x}" for i in range(29, 9, -1)]
    assert rows[0]["site"] == "blog.example" and rows[0]["page_url"] == "https://blog.example/p29"
    assert rows[0]["image_url"] == "https://blog.example/i29.png" and rows[0]["score"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"site": "shop.example"}, [i for i in range(29, 9, -1) if i % 2 == 0]),
        ({"label": "dog"}, [i for i in range(29, 9, -1) if i % 2 == 1]),
        ({"min_score": "1.52"}, list(range(29, 19, -1))),
        ({"since": (T0 + dt.timedelta(days=25)).isoformat()}, list(range(29, 24, -1))),
        ({"until": (T0 + dt.timedelta(days=12)).isoformat()}, [11, 10]),
        ({"site": "shop.example", "min_score": "1.52", "until": "2026-11-27T00:00:00"}, [24, 22, 20]),
    ],
)
def test_filters(reports_api, params: dict[str, str], expected: list[int]) -> None:  # noqa: ANN001
    api, tokens = reports_api
    rows = _get(api, tokens["acme"], **params)["items"]
    assert [row["sha256"] for row in rows] == [f"{i:064x}" for i in expected]


def test_cursor_pagination_visits_every_row_once(reports_api) -> None:  # noqa: ANN001
    api, tokens = reports_api
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
        reply = http("GET", f"{api.base}/v1/reports/flagged", tokens["acme"], params=params)
        page = reply.json()
        seen += [row["sha256"] for row in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert reply.headers["X-Next-Cursor"] == cursor and 'rel="next"' in reply.headers["Link"]
    assert pages == 3 and len(seen) == 20 == len(set(seen))


def test_csv_has_the_same_rows(reports_api) -> None:  # noqa: ANN001
    api, tokens = reports_api
    as_json = _get(api, tokens["acme"], site="shop.example")["items"]
    reply = http(
        "GET", f"{api.base}/v1/reports/flagged", tokens["acme"], params={"site": "shop.example", "format": "csv"}
    )
    assert reply.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.body.decode())))
    assert [row["sha256"] for row in rows] == [row["sha256"] for row in as_json]
    by_accept = http("GET", f"{api.base}/v1/reports/flagged", tokens["acme"], headers={"Accept": "text/csv"})
    assert by_accept.body.decode().startswith("sha256,label,")


def test_tenants_see_only_their_own_sightings(reports_api) -> None:  # noqa: ANN001
    api, tokens = reports_api
    rows = _get(api, tokens["globex"])["items"]
    assert [row["sha256"] for row in rows] == ["f" * 64, f"{29:064x}"]
    assert {row["site"] for row in rows} == {"globex.example"}  # never acme's blog.example
    assert _get(api, tokens["globex"], site="blog.example")["items"] == []


def test_bad_parameters_are_422(reports_api) -> None:  # noqa: ANN001
    api, tokens = reports_api
    for params, code in [
        ({"cursor": "garbage"}, "invalid_cursor"),
        ({"limit": "0"}, "invalid_parameter"),
        ({"limit": "abc"}, "invalid_parameter"),
        ({"since": "yesterday"}, "invalid_parameter"),
        ({"min_score": "nan"}, "invalid_parameter"),
        ({"format": "xml"}, "invalid_parameter"),
    ]:
        reply = http("GET", f"{api.base}/v1/reports/flagged", tokens["acme"], params=params)
        assert reply.status == 422 and reply.json()["code"] == code, params
