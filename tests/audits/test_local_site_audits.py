"""Issue 37, item 1: the owner of a machine audits a local or staging site with ``scanner audit add
--allow-private``, recorded with the audit and honoured by a running ``scanner serve`` started without any fetch
settings; every failed run says why, in ``audit history``, ``/v1/audits/{id}/runs`` and the webhook."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from scanner.audits import runner
from scanner.settings import Settings
from tests.support.audit_sites import Receiver, Site
from tests.support.commands import scanner, serving
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow  # scanner serve and audit runs in subprocesses

LOCAL_SITES = {"SCANNER_FETCH_ALLOW_PRIVATE": "true", "SCANNER_FETCH_ANY_PORT": "true"}


def _table(stdout: str) -> list[list[str]]:
    """The data rows of a rich table: "| 1 | ... |"."""
    return [
        [cell.strip() for cell in line.strip().strip("│|").split("│")]
        for line in stdout.splitlines()
        if re.match(r"^[│|]\s*\d+\s*[│|]", line.strip())
    ]


def _history(data_dir: Path, audit_id: str) -> list[list[str]]:
    history = scanner(data_dir, "audit", "history", audit_id, timeout=120)
    assert history.returncode == 0, history.stderr
    return _table(history.stdout)


def _added(data_dir: Path, *args: str, **extra: str) -> str:
    added = scanner(data_dir, "audit", "add", *args, timeout=120, **extra)
    assert added.returncode == 0, added.stderr
    return re.search(r"audit (\d+):", added.stdout).group(1)  # type: ignore[union-attr]


def _post(url: str, key: str) -> Any:
    request = urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


@pytest.mark.browser
def test_an_allowed_local_audit_runs_under_plain_serve_and_a_refused_one_says_why(site: Site, tmp_path: Path) -> None:
    refused = scanner(tmp_path, "audit", "add", site.url, "--every", "1d", timeout=120)
    assert refused.returncode == 2 and "--allow-private" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    allowed = _added(tmp_path, site.url, "--every", "2s", "--allow-private", "--name", "staging")
    # What the user did: the env settings at `audit add` only, then a `scanner serve` without them.
    by_env = _added(tmp_path, site.url, "--every", "1d", "--name", "by-env", **LOCAL_SITES)
    listed = scanner(tmp_path, "audit", "list", timeout=120)
    assert listed.returncode == 0, listed.stderr
    header = next(line for line in listed.stdout.splitlines() if "private ok" in line)
    column = [cell.strip() for cell in header.strip().strip("┃|").split("┃")].index("private ok")
    private_ok = {row[0]: row[column] for row in _table(listed.stdout)}
    assert private_ok == {allowed: "yes", by_env: "no"}
    key = scanner(tmp_path, "keys", "create", "--name", "test", timeout=120).stdout.strip()

    with serving(tmp_path, "--audit-tick", "1") as served:  # no SCANNER_FETCH_* settings at all
        done = wait_for(lambda: [r for r in _history(tmp_path, allowed) if r[2] == "done"], 300, 1, "a run")
        _post(f"{served.base}/v1/audits/{by_env}/runs", key)
        failed = wait_for(lambda: [r for r in _history(tmp_path, by_env) if r[2] == "failed"], 300, 1, "a failure")
        runs = served.get_json(f"/v1/audits/{by_env}/runs", key)["items"]
        audits = {item["id"]: item for item in served.get_json("/v1/audits", key)["items"]}
    assert (done[-1][3], done[-1][4]) == ("1", str(len(site.images)))
    assert failed[0][-1].startswith("blocked_address: ")  # the reason column (wrapped: its first line)
    assert runs[0]["status"] == "failed" and runs[0]["error_code"] == "blocked_address"
    assert "--allow-private" in runs[0]["error"]
    assert audits[int(allowed)]["allow_private"] is True and audits[int(by_env)]["allow_private"] is False
    assert "Traceback" not in served.output


@pytest.mark.browser
def test_a_failed_run_tells_its_webhook_why(settings: Settings, make_audit: Any, receiver: Receiver) -> None:
    audit_id = make_audit("http://127.0.0.1:9/", webhook_url=receiver.url, webhook_secret="s3cret-key")
    result = runner.run_now(settings, audit_id)
    assert result.status == "failed" and result.error_code == "no_page", result
    wait_for(lambda: receiver.requests, 30, 0.1, "the webhook")
    payload = json.loads(receiver.requests[0][1])
    assert payload["run"]["status"] == "failed"
    assert payload["run"]["error"]["code"] == "no_page"
    assert "reached no page" in payload["run"]["error"]["message"]


def _refused(base: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/v1/audits",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as err:
        assert err.code == 422
        return json.load(err)
    raise AssertionError(f"the audit was created: {body}")


def test_an_api_audit_of_a_private_site_stays_refused(site: Site, tmp_path: Path) -> None:
    """A tenant cannot ask for what `--allow-private` gives: the API has no such field and follows the server's
    fetch rules."""
    key = scanner(tmp_path, "keys", "create", "--name", "tenant", timeout=120).stdout.strip()
    with serving(tmp_path) as served:
        asked = _refused(served.base, key, {"start_url": site.url, "every": "6h", "allow_private": True})
        plain = _refused(served.base, key, {"start_url": site.url, "every": "6h"})
    assert asked["code"] == "invalid_body", asked
    assert plain["code"] == "blocked_address", plain
