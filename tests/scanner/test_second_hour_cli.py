"""Issue 37, item 2: mistakes a new user makes in the second hour get one line at once, saying what to do, and
the exit code of the CLI's other usage errors (2).  The ``scanner`` command through its entry point."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.support.commands import scanner
from tests.support.servers import free_port

pytestmark = pytest.mark.slow  # the scanner command in subprocesses


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_an_unknown_revision_is_one_line(tmp_path: Path) -> None:
    for command in ("upgrade", "downgrade"):
        refused = scanner(tmp_path, "db", command, "zzzz", timeout=120)
        assert refused.returncode == 2, refused.stderr
        line = _one_line(refused.stderr)
        assert "zzzz" in line and "0001" in line and "head" in line


def test_serve_on_a_port_in_use_says_so_before_starting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = scanner(tmp_path, "serve", "--port", str(port), timeout=120)
    assert refused.returncode == 2
    assert f"port {port} is in use" in _one_line(refused.stderr) and "--port" in refused.stderr
    assert "scanner API on" not in refused.stdout


def test_report_api_without_a_scheme_and_an_unreachable_api(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    for api in (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        refused = scanner(tmp_path, "report", "--api", api, "--key", "k", timeout=120)
        assert refused.returncode == 2
        line = _one_line(refused.stderr)
        assert f"cannot reach the scanner API at http://127.0.0.1:{port}" in line, line
        assert "ssl:default" not in line and "0 unreachable" not in line
    bad = scanner(tmp_path, "report", "--api", "not a server", "--key", "k", timeout=120)
    assert bad.returncode == 2 and "--api" in _one_line(bad.stderr)


def test_audit_add_makes_a_bare_loopback_host_http_as_crawl_does(tmp_path: Path) -> None:
    port = free_port()
    added = scanner(tmp_path, "audit", "add", f"127.0.0.1:{port}", "--every", "1d", "--allow-private", timeout=120)
    assert added.returncode == 0, added.stderr
    assert re.search(rf"audit \d+: http://127\.0\.0\.1:{port} ", added.stdout), added.stdout
    public = scanner(tmp_path, "audit", "add", "example.com", "--every", "1d", timeout=120)
    assert public.returncode == 0, public.stderr
    assert "https://example.com" in public.stdout


def test_report_site_without_a_host_is_a_usage_error(tmp_path: Path) -> None:
    refused = scanner(tmp_path, "report", "--site", "http://", timeout=120)
    assert refused.returncode == 2
    assert "--site" in _one_line(refused.stderr)
    usage = scanner(tmp_path, "report", "--limit", "many", timeout=120)
    assert usage.returncode == refused.returncode  # the exit code of argparse's own usage errors
    fine = scanner(tmp_path, "report", "--site", "http://shop.example/", timeout=120)
    assert fine.returncode == 0, fine.stderr
