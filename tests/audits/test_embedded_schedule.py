"""Issue 14, item 1: with the default set-up (no broker) a scheduled audit runs under ``scanner serve``, and
``scanner audit add`` says where its runs happen.  Everything as a person runs it: CLI subprocesses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.audit_sites import Site
from tests.support.commands import scanner, serving
from tests.support.waiting import wait_for


def _runs(data_dir: Path, audit_id: str) -> list[list[str]]:
    history = scanner(data_dir, "audit", "history", audit_id, timeout=120)
    assert history.returncode == 0, history.stderr
    # rows of the rich table: "| run | started | status | pages | images | flagged ..."
    return [
        [cell.strip() for cell in line.strip("│|").split("│")]
        for line in history.stdout.splitlines()
        if re.match(r"^[│|]\s*\d+\s*[│|]", line)
    ]


LOCAL_SITES = {"SCANNER_FETCH_ALLOW_PRIVATE": "true", "SCANNER_FETCH_ANY_PORT": "true"}


@pytest.mark.browser
def test_an_audit_added_in_the_default_setup_runs_under_scanner_serve(site: Site, tmp_path: Path) -> None:
    # A loopback site is refused by default (audit runs follow the fetcher's rules), with the setting to use.
    refused = scanner(tmp_path, "audit", "add", site.url, "--every", "2s", timeout=120)
    assert refused.returncode == 2 and "--allow-private" in refused.stderr
    added = scanner(tmp_path, "audit", "add", site.url, "--every", "2s", timeout=120, **LOCAL_SITES)
    assert added.returncode == 0, added.stderr
    assert "next run" in added.stdout and "scanner serve" in added.stdout
    audit_id = re.search(r"audit (\d+):", added.stdout).group(1)  # type: ignore[union-attr]

    with serving(tmp_path, "--audit-tick", "1", **LOCAL_SITES) as served:
        done = wait_for(lambda: [run for run in _runs(tmp_path, audit_id) if run[2] == "done"], 300, 1, "a run")
    assert "audits scheduled here" in served.output
    pages, images = done[-1][3], done[-1][4]
    assert (pages, images) == ("1", str(len(site.images)))
    # Ctrl-C ends the server cleanly: no traceback, and no run is left holding its lock.
    assert "Traceback" not in served.output
    assert all(run[2] != "running" for run in _runs(tmp_path, audit_id))


def test_worker_without_a_broker_points_to_scanner_serve(tmp_path: Path) -> None:
    refused = scanner(tmp_path, "worker", "--beat", timeout=120)
    assert refused.returncode == 2
    assert "SCANNER_BROKER_URL" in refused.stderr and "scanner serve" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
