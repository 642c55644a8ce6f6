"""Include/exclude regexes are matched in linear time (RE2), and patterns RE2 cannot run are refused up front:
by CrawlConfig, and by POST /v1/audits with 422 invalid_pattern."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scanner.crawl import CrawlConfig
from scanner.crawl.patterns import pattern_error
from scanner.settings import Settings
from tests.support.api import http, start_api
from tests.support.commands import REPO

EVIL = r"(a+)+$"  # exponential for a backtracking engine on "aaaa...!"


def test_a_catastrophic_pattern_is_matched_in_linear_time() -> None:
    """In a child process with a generous limit: Python's re would need about 2**60 steps for this URL (the
    limit only ends a run that would otherwise never end; the test asserts no duration)."""
    code = (
        "from scanner.crawl import CrawlConfig\n"
        "from scanner.crawl.crawler import _LinkRules\n"
        f"config = CrawlConfig(start_url='http://shop.example/', exclude=({EVIL!r},))\n"
        "rules = _LinkRules(config, 'http://shop.example/')\n"
        "print(rules.reject_reason('http://shop.example/' + 'a' * 60 + '!'))\n"
        "print(rules.reject_reason('http://shop.example/' + 'a' * 60))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "excluded"]


@pytest.mark.parametrize("pattern", ["(?=admin)", r"(a)\1", "(unclosed", "x" * 1001])
def test_patterns_re2_cannot_run_are_refused(pattern: str) -> None:
    assert pattern_error(pattern) is not None
    with pytest.raises(ValueError, match="pattern"):
        CrawlConfig(start_url="http://shop.example/", include=(pattern,))


@pytest.mark.slow
def test_audit_creation_refuses_invalid_patterns(tmp_path: Path) -> None:
    api = start_api(Settings(data_dir=tmp_path / "data", fetch_allow_private=True))
    try:
        key = api.new_key("p", "acme")
        base = api.base + "/v1/audits"
        for field in ("include", "exclude"):
            reply = http("POST", base, key, json={"start_url": "http://127.0.0.1/", "every": "6h", field: ["(?=x)"]})
            assert reply.status == 422 and reply.json()["code"] == "invalid_pattern", reply.body
        created = http("POST", base, key, json={"start_url": "http://127.0.0.1/", "every": "6h", "exclude": [EVIL]})
        assert created.status == 201, created.body  # valid, and harmless under RE2
    finally:
        api.stop()
