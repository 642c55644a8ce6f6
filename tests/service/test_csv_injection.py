"""CSV formula injection: image URLs are validated on intake, and every CSV export neutralises text cells that
a spreadsheet would run as a formula (rows stored before the validation, hosts, labels)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from scanner.csvsafe import safe_cell, safe_row
from scanner.db import keys, queries
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from scanner.versions import served_versions
from tests.support.api import http, start_api, upload
from tests.support.images import flat_png
from tests.support.queries import add_item, record_image, write_verdict
from tests.support.verdicts import verdict_with_score

FORMULAS = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+2", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


@pytest.mark.parametrize("value", FORMULAS)
def test_formula_cells_become_text(value: str) -> None:
    assert safe_cell(value) == "'" + value
    assert safe_row({"a": value, "b": -0.5, "c": "https://shop.example/"}) == {
        "a": "'" + value,
        "b": -0.5,
        "c": "https://shop.example/",
    }


def test_uploaded_image_urls_are_validated_and_exports_neutralised(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    api = start_api(settings, engine=object())  # no analysis: the flagged verdict is written below
    try:
        token = api.new_key("csv", "acme")
        for bad in ("=HYPERLINK(\"http://evil.example\")", "javascript:alert(1)", "/relative.png"):
            form = upload(flat_png(1), image_urls=json.dumps([bad]))
            reply = http("POST", f"{api.base}/v1/scans", token, data=form)
            assert reply.status == 422 and reply.json()["code"] == "invalid_body", (bad, reply.body)
        label = "data:image/png;sha256=" + "ab" * 32  # what the crawler reports for a data: URL
        form = upload(flat_png(2), flat_png(3), image_urls=json.dumps(["https://cdn.example/a.png", label]))
        assert http("POST", f"{api.base}/v1/scans", token, data=form).status in (201, 202)

        # A row stored before intake validated URLs, on a page whose host begins with "-", labelled "=...".
        versions = served_versions(settings)
        engine = make_engine(settings.db_url)
        with transaction(make_sessionmaker(engine)) as session:
            tenant = keys.get_or_create_tenant(session, "acme").id
            scan = queries.new_scan(
                session, tenant, "api", "https://-1+2.example/p", versions.model_version, versions.calibration_version
            )
            image = record_image(session, "c" * 64, b"legacy", "PNG", 32, 32)
            add_item(session, scan, 0, image=image, image_url='=HYPERLINK("http://evil.example","open")')
            verdict = verdict_with_score(versions.model_version, versions.calibration_version, "@cat", 5.0)
            write_verdict(session, image.id, verdict)
        engine.dispose()
        reply = http("GET", f"{api.base}/v1/reports/flagged?format=csv", token)
        assert reply.status == 200
        rows = list(csv.DictReader(io.StringIO(reply.body.decode())))
        assert len(rows) == 1
        assert rows[0]["image_url"] == "'=HYPERLINK(\"http://evil.example\",\"open\")"
        assert rows[0]["site"] == "'-1+2.example"
        assert rows[0]["label"] == "'@cat"
        assert rows[0]["page_url"] == "https://-1+2.example/p"
    finally:
        api.stop()
