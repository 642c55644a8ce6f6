"""Per-host politeness: a minimum gap between request starts, and pauses asked for by Retry-After.

The per-host concurrency cap is enforced where pages are started (the crawler never claims a URL of a host that
already has ``per_host_concurrency`` pages in flight); this module spaces the starts. Each caller reserves the
next free start slot synchronously and then sleeps until it, so concurrent callers for one host line up
``delay`` apart without a lock.
"""

from __future__ import annotations

import asyncio
import email.utils
import time

RETRY_AFTER_CAP_S = 60.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


class HostPacer:
    """Spaces request starts to each host by at least its delay, and holds a host while it asked us to wait."""

    def __init__(self, default_delay_s: float) -> None:
        self.default_delay_s = default_delay_s
        self._delay: dict[str, float] = {}
        self._next_start: dict[str, float] = {}

    def set_delay(self, host: str, delay_s: float) -> None:
        """Raise a host's delay (robots Crawl-delay); never below the configured one."""
        self._delay[host] = max(self.default_delay_s, delay_s)

    def delay(self, host: str) -> float:
        return self._delay.get(host, self.default_delay_s)

    def pause(self, host: str, seconds: float) -> None:
        """No request to ``host`` starts for ``seconds`` (Retry-After on 429/503)."""
        self._next_start[host] = max(self._next_start.get(host, 0.0), time.monotonic() + seconds)

    def paused_for(self, host: str) -> float:
        return max(0.0, self._next_start.get(host, 0.0) - time.monotonic())

    async def wait_turn(self, host: str) -> None:
        """Sleep until this host may receive the next request, and book that start."""
        now = time.monotonic()
        start = max(now, self._next_start.get(host, 0.0))
        self._next_start[host] = start + self.delay(host)
        if start > now:
            await asyncio.sleep(start - now)
