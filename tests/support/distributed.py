"""The distributed mode as its tests run it: settings for a PostgreSQL database and a Redis broker, and a scan
followed through the API until its analysis is done."""

from __future__ import annotations

from pathlib import Path

from scanner.settings import Settings
from tests.support.api import RunningApi, http
from tests.support.waiting import wait_for


def distributed_settings(tmp_path: Path, database_url: str, broker_url: str, **overrides: object) -> Settings:
    values = dict(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url=broker_url,
        relay_interval_s=0.5,
        requeue_after_s=30.0,
        rate_limit_per_minute=100_000,
        rate_limit_burst=100_000,
    )
    values.update(overrides)
    return Settings(**values)


def scan_status(api: RunningApi, key: str, scan_id: str) -> dict:
    return http("GET", f"{api.base}/v1/scans/{scan_id}", key).json()


def wait_done(api: RunningApi, key: str, scan_id: str, timeout: float = 120) -> dict:
    return wait_for(
        lambda: (d := scan_status(api, key, scan_id))["status"] == "done" and d,
        timeout,
        0.2,
        f"scan {scan_id} to finish",
    )
