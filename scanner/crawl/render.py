"""Loading one page the way a visitor would: navigate, let it settle, scroll through it, wait for late images.

Steps and bounds (every wait is bounded, so a page that never goes quiet costs seconds, not the timeout):
``goto(wait_until="load")`` within the page timeout; up to 2 s for network idle (scripts that insert images
after load); scrolling one viewport at a time, at most 20 viewports, pausing briefly at each so that
IntersectionObserver and ``loading="lazy"`` loaders fire; then up to 2 s for the images that started loading
to finish. Navigation errors become stable codes: ``timeout``, ``network_error``, ``not_html`` (a download).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

NETWORK_IDLE_WAIT_S = 2.0
MAX_SCROLL_STEPS = 20
SCROLL_PAUSE_S = 0.12
IMAGES_DONE_WAIT_S = 2.0
SETTLE_S = 0.15

_SCROLL_STEP_JS = """() => {
  const before = window.scrollY;
  window.scrollBy(0, window.innerHeight);
  const root = document.scrollingElement || document.documentElement;
  return window.scrollY === before || window.scrollY + window.innerHeight >= root.scrollHeight - 2;
}"""
_IMAGES_DONE_JS = "() => Array.from(document.images).every((img) => img.complete)"


@dataclass(frozen=True)
class Navigation:
    """The outcome of loading the page document."""

    status: int | None
    final_url: str
    content_type: str | None
    retry_after: str | None
    error: str | None


def _error_code(exc: PlaywrightError) -> str:
    message = str(exc)
    if isinstance(exc, PlaywrightTimeoutError):
        return "timeout"
    if "Download is starting" in message or "net::ERR_ABORTED" in message:
        return "not_html"
    if "net::ERR_CONNECTION_REFUSED" in message:
        return "connection_refused"
    if "net::ERR_NAME_NOT_RESOLVED" in message:
        return "dns_error"
    return "network_error"


async def navigate(page: Page, url: str, timeout_s: float) -> Navigation:
    """Load ``url`` until its load event; redirects are followed and the final URL recorded."""
    try:
        response = await page.goto(url, wait_until="load", timeout=timeout_s * 1000)
    except PlaywrightError as exc:
        return Navigation(None, page.url if page.url != "about:blank" else url, None, None, _error_code(exc))
    if response is None:
        return Navigation(None, page.url, None, None, None)
    headers = await response.all_headers()
    return Navigation(response.status, page.url, headers.get("content-type"), headers.get("retry-after"), None)


async def settle(page: Page, deadline: float, scroll: bool) -> None:
    """Network idle (bounded), scroll to the bottom (bounded), then let started images finish (bounded)."""
    await _bounded(page.wait_for_load_state("networkidle", timeout=_ms(deadline, NETWORK_IDLE_WAIT_S)))
    if scroll:
        for _ in range(MAX_SCROLL_STEPS):
            if time.monotonic() >= deadline:
                break
            at_bottom = await page.evaluate(_SCROLL_STEP_JS)
            await asyncio.sleep(SCROLL_PAUSE_S)
            if at_bottom:
                break
    await asyncio.sleep(SETTLE_S)
    await _bounded(page.wait_for_function(_IMAGES_DONE_JS, timeout=_ms(deadline, IMAGES_DONE_WAIT_S), polling=100))


def _ms(deadline: float, cap_s: float) -> float:
    return max(1.0, min(cap_s, deadline - time.monotonic()) * 1000)


async def _bounded(waiting: Awaitable[object]) -> None:
    with contextlib.suppress(PlaywrightError):
        await waiting
