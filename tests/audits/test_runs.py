"""Runs of an audit on a local site, in embedded mode with the shipped models: the snapshot, the diff between
two runs whose images changed, the run lock, and the signed webhook with its retries."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from typing import Any

import pytest
from sqlalchemy import update

from scanner.audits import runner, store, webhooks
from scanner.audits.diff import Seen, compare
from scanner.db.models import AuditRun, utcnow
from scanner.db.session import transaction
from scanner.settings import Settings
from tests.support.audit_sites import Receiver, Site
from tests.support.images import crawlable_png


def _run(settings: Settings, audit_id: int) -> runner.RunResult:
    return runner.run_now(settings, audit_id)


@pytest.mark.browser
def test_two_runs_record_snapshots_and_the_diff(settings: Settings, sessions: Any, site: Site, make_audit: Any) -> None:
    audit_id = make_audit(site.url)
    first = _run(settings, audit_id)
    assert first.status == "done", first.error
    assert first.counts["pages"] == 1 and first.counts["images"] == 3
    assert first.diff is not None and first.diff["previous_run"] is None and len(first.diff["added"]) == 3

    site.images["a.png"] = crawlable_png(101)  # replaced in place
    del site.images["b.png"]  # removed
    site.images["d.png"] = crawlable_png(4)  # added
    second = _run(settings, audit_id)
    assert second.status == "done", second.error
    diff = second.diff
    assert diff is not None and diff["previous_run"] == first.run_id
    url = site.url + "img/"
    assert [g["url"] for g in diff["gone"]] == [url + "b.png"]
    assert [a["url"] for a in diff["added"]] == [url + "d.png"]

    with sessions() as session:
        before = {s.url: s for s in store.snapshot_of(session, first.run_id)}
        after = {s.url: s for s in store.snapshot_of(session, second.run_id)}
        runs = store.runs_of(session, audit_id)
    assert set(after) == {url + "a.png", url + "c.png", url + "d.png"}
    assert after[url + "a.png"].sha256 != before[url + "a.png"].sha256
    assert after[url + "c.png"] == before[url + "c.png"]
    # The diff agrees with the verdicts the model gave, whatever they are.
    expected_changed = {
        key
        for key in (url + "a.png", url + "c.png")
        if (bool(before[key].flagged), before[key].label) != (bool(after[key].flagged), after[key].label)
    }
    assert {c["key"] for c in diff["changed"]} == expected_changed
    expected_new = {k for k, s in after.items() if s.flagged and not (k in before and before[k].flagged)}
    assert {n["url"] for n in diff["newly_flagged"]} == expected_new
    latest = runs[0]
    assert (latest.id, latest.status, latest.images, latest.gone) == (second.run_id, "done", 3, 1)
    assert latest.changed == len(expected_changed) and latest.locked_by is None


def test_diff_rules_on_handmade_snapshots() -> None:
    before = [
        Seen("1", "http://s/a", False, "cat", 0.1),
        Seen("2", "http://s/b", True, "dog", 0.9),
        Seen("3", "http://s/c", False, "cat", 0.1),
        Seen("4", "data:image/png;base64,x", False, "cat", 0.1),
    ]
    after = [
        Seen("9", "http://s/a", True, "cat", 0.8),  # replaced, now flagged
        Seen("3", "http://s/c", False, "frog", 0.1),  # label changed
        Seen("5", "http://s/d", True, "ship", 0.9),  # new and flagged
        Seen("4", "data:image/png;base64,y", False, "cat", 0.1),  # same bytes, another data: URL: same image
    ]
    diff = compare(before, after, 7)
    assert [s["url"] for s in diff["newly_flagged"]] == ["http://s/a", "http://s/d"]
    assert [s["url"] for s in diff["gone"]] == ["http://s/b"]
    assert [c["key"] for c in diff["changed"]] == ["http://s/a", "http://s/c"]
    assert [s["url"] for s in diff["added"]] == ["http://s/d"]


def test_the_lock_admits_one_run_and_expired_locks_are_taken_over(sessions: Any, make_audit: Any) -> None:
    audit_id = make_audit("http://127.0.0.1:9/")
    outcomes: list[Any] = []
    barrier = threading.Barrier(2)

    def attempt(owner: str) -> None:
        barrier.wait()
        try:
            with transaction(sessions) as session:
                outcomes.append(store.claim_run(session, audit_id, owner, "manual"))
        except store.AlreadyRunning as err:
            outcomes.append(err)

    threads = [threading.Thread(target=attempt, args=(f"runner-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    won = [o for o in outcomes if isinstance(o, int)]
    assert len(won) == 1 and sum(isinstance(o, store.AlreadyRunning) for o in outcomes) == 1
    assert "already running" in str(next(o for o in outcomes if isinstance(o, Exception)))

    # The winner crashes: once its lock expires, the next claim marks it failed and takes over.
    with transaction(sessions) as session:
        past = utcnow() - dt.timedelta(seconds=1)
        session.execute(update(AuditRun).where(AuditRun.id == won[0]).values(lock_expires_at=past))
    with transaction(sessions) as session:
        taken = store.claim_run(session, audit_id, "runner-new", "manual")
    with sessions() as session:
        crashed, fresh = session.get_one(AuditRun, won[0]), session.get_one(AuditRun, taken)
        assert crashed.status == "failed" and "expired" in (crashed.error or "") and crashed.locked_by is None
        assert fresh.status == "queued" and fresh.locked_by == "runner-new"


def test_webhook_is_signed_and_retried(settings: Settings, sessions: Any, make_audit: Any, receiver: Receiver) -> None:
    audit_id = make_audit("http://127.0.0.1:9/", webhook_url=receiver.url, webhook_secret="s3cret")
    with transaction(sessions) as session:
        run_id = store.claim_run(session, audit_id, "test", "manual")
    payload = {"audit": {"id": audit_id}, "run": {"id": run_id}, "counts": {"flagged": 1}, "diff": {}}
    policy = runner._webhook_policy(settings)
    receiver.statuses = [503, 500]  # fails twice, then succeeds
    delivered = asyncio.run(webhooks.deliver(sessions, run_id, receiver.url, "s3cret", payload, policy, backoff_s=0.05))
    assert delivered and len(receiver.requests) == 3
    headers, body = receiver.requests[-1]
    assert json.loads(body) == payload
    timestamp, signature = headers["X-Scanner-Timestamp"], headers["X-Scanner-Signature"]
    assert webhooks.verify("s3cret", timestamp, body, signature)
    assert not webhooks.verify("other", timestamp, body, signature)
    assert not webhooks.verify("s3cret", timestamp, body + b" ", signature)
    with sessions() as session:
        attempts = store.deliveries_of(session, run_id)
    assert [(d.attempt, d.status_code) for d in attempts] == [(1, 503), (2, 500), (3, 200)]
    assert attempts[0].error == "HTTP 503" and attempts[2].error is None


def test_webhook_to_a_private_address_is_refused_unless_allowed(
    sessions: Any, make_audit: Any, receiver: Receiver
) -> None:
    audit_id = make_audit("http://127.0.0.1:9/")
    with transaction(sessions) as session:
        run_id = store.claim_run(session, audit_id, "test", "manual")
    strict = webhooks.FetchPolicy(allow_private=False, allowed_ports=None)
    assert not asyncio.run(webhooks.deliver(sessions, run_id, receiver.url, "s", {}, strict, attempts=1))
    assert receiver.requests == []
    with sessions() as session:
        assert "blocked_address" in (store.deliveries_of(session, run_id)[0].error or "")


def test_a_webhook_name_that_resolves_only_to_loopback_is_recorded_as_blocked_address(
    sessions: Any, make_audit: Any, receiver: Receiver
) -> None:
    """Not a DNS error: the name resolved, to addresses the policy refuses (and they are not named)."""
    audit_id = make_audit("http://127.0.0.1:9/")
    with transaction(sessions) as session:
        run_id = store.claim_run(session, audit_id, "test", "manual")
    strict = webhooks.FetchPolicy(allow_private=False, allowed_ports=None)
    by_name = receiver.url.replace("127.0.0.1", "localhost")
    assert not asyncio.run(webhooks.deliver(sessions, run_id, by_name, "s", {}, strict, attempts=1))
    assert receiver.requests == []
    with sessions() as session:
        error = store.deliveries_of(session, run_id)[0].error or ""
    assert error.startswith("blocked_address: "), error
    assert "127.0.0.1" not in error


@pytest.mark.parametrize("policy", ["run-once", "skip"])
def test_missed_slots_follow_the_policy(policy: str) -> None:
    from scanner.audits.schedule import next_slot, parse

    every = parse("every 6h")
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    run, following = next_slot(every, now - dt.timedelta(hours=13), now, policy, dt.timedelta(seconds=90))
    assert run == (policy == "run-once") and following == now + dt.timedelta(hours=5)
    run, following = next_slot(every, now - dt.timedelta(seconds=5), now, policy, dt.timedelta(seconds=90))
    assert run and following == now + dt.timedelta(hours=6) - dt.timedelta(seconds=5)
    cron = parse("0 3 * * *")
    assert next_slot(cron, now - dt.timedelta(hours=9), now, policy, dt.timedelta(seconds=90))[1] == dt.datetime(
        2026, 1, 2, 3, 0, tzinfo=dt.UTC
    )
    with pytest.raises(ValueError):
        parse("every day at noon")
