"""What makes an audit valid, shared by ``scanner audit add`` and ``POST /v1/audits``: the spec's fields, its
schedule, its webhook and its start URL under the fetcher's rules.  Each check raises with a message for people;
the CLI prints it, the API answers it as a 422."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from scanner.audits import schedule, store
from scanner.fetch import FetchError, FetchPolicy, check_target
from scanner.intake import fetch_policy
from scanner.settings import Settings
from scanner.siteurl import site_url

MAX_ROBUSTNESS_SAMPLE = 256


def spec_from(site: str, schedule_text: str, **options: Any) -> store.AuditSpec:
    """A validated audit: raises ValueError with a message for people."""
    start_url = site_url(site) if "://" not in site else site  # a bare host: the CLI's one rule (scanner.siteurl)
    parsed = schedule.parse(schedule_text)
    spec = store.AuditSpec(start_url=start_url, schedule=parsed.text, **options)
    if spec.max_pages < 1 or spec.max_depth < 0:
        raise ValueError("max_pages must be at least 1 and max_depth at least 0")
    if spec.missed_run_policy not in schedule.MISSED_POLICIES:
        raise ValueError(f"the missed-run policy is one of {', '.join(schedule.MISSED_POLICIES)}")
    if not 0 <= spec.robustness_sample <= MAX_ROBUSTNESS_SAMPLE:
        raise ValueError(f"the robustness sample is 0 to {MAX_ROBUSTNESS_SAMPLE} images")
    if bool(spec.webhook_url) != bool(spec.webhook_secret):
        raise ValueError("a webhook needs both its URL and its secret")
    return spec


def run_policy(settings: Settings, allow_private: bool) -> FetchPolicy:
    """The address and port rules of an audit's runs: the server's fetch rules, or, for an audit its machine's
    owner allowed private addresses (``scanner audit add --allow-private``), any address and port the fetcher
    ever allows (never 0.0.0.0 and the like: ``scanner.fetch``).  Read at each run, so the running server honours
    it without new settings."""
    policy = fetch_policy(settings)
    if allow_private:
        return dataclasses.replace(policy, allow_private=True, allowed_ports=None)
    return policy


async def check_start_url(start_url: str, settings: Settings, allow_private: bool = False) -> None:
    """Audit runs crawl on the server under ``run_policy``, so a start URL they would refuse is refused when the
    audit is made, rather than failing at every run: raises ``scanner.fetch.FetchError``."""
    await check_target(start_url, run_policy(settings, allow_private))


def check_webhook(spec: store.AuditSpec, settings: Settings | None) -> None:
    """The webhook URL is http(s); with ``settings`` (the CLI), it is also one the fetcher may reach, judged like a
    start URL by the names it resolves to (each delivery checks them again).  The API passes none: it checks the
    URL itself, asynchronously (``scanner.api.audits.check_target_url``)."""
    if not spec.webhook_url:
        return
    if not spec.webhook_url.lower().startswith(("http://", "https://")):
        raise ValueError("the webhook URL must be an http(s) URL")
    if settings is None:
        return
    try:
        asyncio.run(check_target(spec.webhook_url, fetch_policy(settings)))
    except FetchError as err:
        raise ValueError(f"the webhook URL is refused: {err}") from err
