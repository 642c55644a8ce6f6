"""The one Chromium of a crawl: finding its executable, launching it, and handing out pages.

Which executable: an explicit path (``CrawlConfig.browser_path``, else ``SCANNER_CHROMIUM``) wins; then the
browser ``playwright install chromium`` put in place; then a system Chromium (Debian's ``/usr/bin/chromium``
and the usual names on PATH). Machines without internet cannot run ``playwright install``, so the system
package is a first-class choice, not a hack.

Flags: the background-networking, component-update and sync flags stop Chromium from calling home (on a closed
network those calls fail and retry forever).  Those alone left Chromium 156 resolving accounts.google.com and
update.googleapis.com about three times a second (its sign-in and component services ignore them), so the
sign-in, component-update and variations services are pointed at ``127.0.0.1:9``, a port Chromium never
connects to (it is on its restricted list), and pings, DNS prefetch, domain reliability reports and phishing
checks are off.  A crawl confined to the guard proxy (an audit, ``scanner.crawl.guard``) also gets host
resolver rules that resolve no name at all: its pages reach the network through the proxy, which resolves
for them, and nothing the browser does for itself can send a DNS query past it.  ``--no-sandbox`` only when
running as root, where Chromium refuses to start otherwise; for everyone else the sandbox stays on, because
the crawler renders untrusted pages.

Memory: Playwright's memory grows with every page a context has seen, so contexts are recycled after N pages;
a retired context is closed when its last page is, and each page is closed before its context.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

SYSTEM_CHROMIUMS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
NOWHERE = "http://127.0.0.1:9/"  # the discard port: on Chromium's list of ports it never connects to
QUIET_FLAGS = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
    "--headless=new",
    # WebRTC may send UDP past the proxy an audit's crawl is confined to (scanner.crawl.guard): no UDP but proxied.
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    # Phone-home services that the flags above leave running, sent to a port Chromium refuses to connect to.
    f"--gaia-url={NOWHERE}",
    f"--component-updater=url-source={NOWHERE}",
    f"--variations-server-url={NOWHERE}",
    "--no-pings",
    "--dns-prefetch-disable",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--safebrowsing-disable-auto-update",
)
# A crawl whose every request goes through the guard proxy: Chromium itself resolves no name (the proxy's
# address is a literal), so nothing it does for itself leaves the machine.
CONFINED_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",)
VIEWPORT = {"width": 1280, "height": 800}


class BrowserNotFoundError(RuntimeError):
    """No Chromium to run."""


def find_chromium(
    explicit: str | None,
    env: Mapping[str, str],
    managed: str | None,
    which: Callable[[str], str | None] = shutil.which,
) -> str:
    """The Chromium executable to launch, in the documented order; raises BrowserNotFoundError."""
    chosen = explicit or env.get("SCANNER_CHROMIUM")
    if chosen:
        if os.path.isfile(chosen) and os.access(chosen, os.X_OK):
            return chosen
        raise BrowserNotFoundError(f"the browser {chosen!r} (browser_path / SCANNER_CHROMIUM) is not an executable")
    if managed and os.path.isfile(managed):
        return managed
    for name in SYSTEM_CHROMIUMS:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else which(name)
        if found:
            return found
    raise BrowserNotFoundError(
        "no Chromium found: install one with `apt-get install chromium` (Debian) or `playwright install chromium`, "
        "or point SCANNER_CHROMIUM at a Chromium executable"
    )


def launch_args(euid: int | None = None, confined: bool = False) -> list[str]:
    """Command-line flags for Chromium; ``confined``: every page request goes through a proxy (no name is
    resolved by Chromium); ``--no-sandbox`` only for root."""
    root = (os.geteuid() if euid is None else euid) == 0
    return [*QUIET_FLAGS, *(CONFINED_FLAGS if confined else ()), *(["--no-sandbox"] if root else [])]


@dataclass
class LaunchedBrowser:
    """A Playwright driver and the browser it launched; ``close`` stops both."""

    playwright: Playwright
    browser: Browser
    executable: str

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.browser.close()
        with contextlib.suppress(Exception):
            await self.playwright.stop()


async def launch_browser(
    browser_path: str | None = None, env: Mapping[str, str] | None = None, confined: bool = False
) -> LaunchedBrowser:
    """Start Playwright and Chromium (new headless mode); ``confined`` for a crawl behind the guard proxy."""
    playwright = await async_playwright().start()
    try:
        env = os.environ if env is None else env
        executable = find_chromium(browser_path, env, playwright.chromium.executable_path)
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=launch_args(confined=confined),
            chromium_sandbox=os.geteuid() != 0,
        )
    except BaseException:
        await playwright.stop()
        raise
    return LaunchedBrowser(playwright, browser, executable)


@dataclass
class _Slot:
    context: BrowserContext
    pages_opened: int = 0
    open_pages: int = 0
    retired: bool = False


class PagePool:
    """New pages in a shared context that is replaced every ``recycle_after`` pages."""

    def __init__(
        self,
        browser: Browser,
        *,
        user_agent: str,
        recycle_after: int,
        init_script: str = "",
        proxy: dict[str, str] | None = None,
    ) -> None:
        self._browser = browser
        self._proxy = proxy
        self._user_agent = user_agent
        self._recycle_after = recycle_after
        self._init_script = init_script
        self._current: _Slot | None = None
        self._slots: list[_Slot] = []
        self._lock = asyncio.Lock()
        self.contexts_created = 0

    async def _new_slot(self) -> _Slot:
        context = await self._browser.new_context(
            user_agent=self._user_agent,
            viewport=VIEWPORT,  # type: ignore[arg-type]
            service_workers="block",  # a service worker would answer requests where page.on("response") can't see
            accept_downloads=False,
            proxy=self._proxy,  # type: ignore[arg-type]  # the network guard of an audit, else None
        )
        if self._init_script:
            await context.add_init_script(self._init_script)
        self.contexts_created += 1
        slot = _Slot(context)
        self._slots.append(slot)
        return slot

    async def _slot(self) -> _Slot:
        async with self._lock:
            if self._current is None or self._current.pages_opened >= self._recycle_after:
                if self._current is not None:
                    self._current.retired = True
                    await self._close_if_idle(self._current)
                self._current = await self._new_slot()
            self._current.pages_opened += 1
            self._current.open_pages += 1
            return self._current

    async def _close_if_idle(self, slot: _Slot) -> None:
        if slot.retired and slot.open_pages == 0 and slot in self._slots:
            self._slots.remove(slot)
            with contextlib.suppress(Exception):
                await slot.context.close()

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[Page]:
        """A fresh page, closed (before its context, if that is retired) when the block ends."""
        slot = await self._slot()
        try:
            page = await slot.context.new_page()
        except BaseException:
            slot.open_pages -= 1
            raise
        try:
            yield page
        finally:
            with contextlib.suppress(Exception):
                await page.close()
            slot.open_pages -= 1
            await self._close_if_idle(slot)

    async def close(self) -> None:
        """Close every context (and so its pages)."""
        slots, self._slots, self._current = self._slots, [], None
        for slot in slots:
            with contextlib.suppress(Exception):
                await slot.context.close()
