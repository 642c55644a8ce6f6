"""Webhook delivery of a run's summary.

Signature: ``X-Scanner-Signature: sha256=<hex>`` is HMAC-SHA256, keyed with the audit's webhook secret, of the
string ``<X-Scanner-Timestamp>.<raw body>`` (Unix seconds, a dot, the exact bytes of the body).  A receiver
recomputes it over the raw body, compares in constant time, and rejects a timestamp older than a few minutes:
the timestamp is inside the signed string, so a captured delivery cannot be replayed later with a fresh one.

Each attempt is signed anew (with its own timestamp), recorded in ``webhook_deliveries``, and retried with
exponential back-off on network errors, timeouts and 5xx answers; a 4xx is the receiver's final word.
Webhook URLs are set by tenants, so the target is checked like any user-supplied URL (``scanner.fetch``):
private and loopback addresses only where the settings allow them, checked on the address actually connected.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
from aiohttp.resolver import ThreadedResolver
from sqlalchemy.orm import Session, sessionmaker

from scanner.audits import store
from scanner.db.session import transaction
from scanner.fetch import FetchError, FetchPolicy, GuardedConnector, GuardedResolver, as_fetch_error, check_url

ATTEMPTS = 3
BACKOFF_S = 1.0
TIMEOUT_S = 10.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, max_age_s: float = 300.0) -> bool:
    """What a receiver does (the tests use it): constant-time comparison and a freshness check."""
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= max_age_s
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def check_target(url: str, policy: FetchPolicy) -> None:
    """Refuse a webhook URL that is not http(s) or names a refused address or port (raises ``FetchError``)."""
    check_url(url, policy)


async def deliver(
    sessions: sessionmaker[Session],
    run_id: int,
    url: str,
    secret: str,
    payload: dict[str, Any],
    policy: FetchPolicy,
    attempts: int = ATTEMPTS,
    backoff_s: float = BACKOFF_S,
) -> bool:
    """POST ``payload`` until an attempt gets a 2xx/3xx, a 4xx, or ``attempts`` run out; True when delivered."""
    body = json.dumps(payload, sort_keys=True).encode()
    resolver = GuardedResolver(policy, ThreadedResolver())
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(
        connector=GuardedConnector(policy, resolver), timeout=timeout, trust_env=False
    ) as client:
        for attempt in range(1, attempts + 1):
            status, error, duration_ms = await _attempt(client, url, secret, body, policy)
            await asyncio.to_thread(_record, sessions, run_id, attempt, status, error, duration_ms)
            if status is not None and status < 500:
                return status < 400
            if attempt < attempts:
                await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    return False


async def _attempt(
    client: aiohttp.ClientSession, url: str, secret: str, body: bytes, policy: FetchPolicy
) -> tuple[int | None, str | None, float]:
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": policy.user_agent,
        "X-Scanner-Timestamp": timestamp,
        "X-Scanner-Signature": sign(secret, timestamp, body),
    }
    started = time.perf_counter()
    try:
        check_target(url, policy)
        async with client.post(url, data=body, headers=headers, allow_redirects=False) as reply:
            await reply.read()
            error = None if reply.status < 400 else f"HTTP {reply.status}"
            return reply.status, error, (time.perf_counter() - started) * 1000
    except (aiohttp.ClientError, TimeoutError, OSError, FetchError) as err:
        refused = as_fetch_error(err, url)  # the fetcher's code first: blocked_address, dns_failure, timeout...
        return None, f"{refused.code}: {refused.message}", (time.perf_counter() - started) * 1000


def _record(
    sessions: sessionmaker[Session], run_id: int, attempt: int, status: int | None, error: str | None, ms: float
) -> None:
    with transaction(sessions) as session:
        store.record_delivery(session, run_id, attempt, status, error, ms)
