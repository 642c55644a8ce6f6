"""robots.txt: fetched once per origin with aiohttp, parsed with ``urllib.robotparser``.

Rules (RFC 9309): a 4xx robots.txt means no rules (crawl everything); a 5xx or an unreachable one means the site
is not ready to be crawled, so everything is disallowed (reported as ``robots_unavailable``). ``Crawl-delay``
raises the per-host delay; the standard library parses only whole seconds, so a fractional delay is rounded up
(``0.5`` becomes ``1``: more polite than asked, never less). ``Sitemap:`` lines feed the sitemap reader
(relative ones, which the protocol does not allow but sites write, are resolved against robots.txt).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass, field
from urllib.parse import urljoin
from urllib.robotparser import RobotFileParser

import aiohttp

from scanner.crawl.textfetch import TooLargeError, get_capped

log = logging.getLogger(__name__)

ROBOTS_MAX_BYTES = 500 * 1024
ROBOTS_TIMEOUT_S = 10.0
_DELAY_LINE = re.compile(r"^(\s*crawl-delay\s*:\s*)([0-9]*\.?[0-9]+)(\s*(?:#.*)?)$", re.IGNORECASE)


@dataclass
class RobotsRules:
    """What one origin's robots.txt allows our user agent."""

    parser: RobotFileParser | None  # None: allow everything
    unavailable: bool = False
    # Why an unreachable site is unavailable ("connection_refused", ...): the page error people see, since
    # "robots_unavailable" would blame robots.txt for a server that is not there at all.
    reason: str | None = None
    sitemaps: list[str] = field(default_factory=list)

    def allowed(self, url: str, user_agent: str) -> bool:
        if self.unavailable:
            return False
        return self.parser is None or self.parser.can_fetch(user_agent, url)

    def crawl_delay(self, user_agent: str) -> float:
        if self.parser is None:
            return 0.0
        delay = self.parser.crawl_delay(user_agent)
        return float(delay) if delay else 0.0


def _round_up_delays(lines: list[str]) -> list[str]:
    def fix(line: str) -> str:
        match = _DELAY_LINE.match(line)
        if not match:
            return line
        return f"{match.group(1)}{math.ceil(float(match.group(2)))}{match.group(3)}"

    return [fix(line) for line in lines]


def parse_robots(text: str, url: str) -> RobotsRules:
    """Rules from the text of a robots.txt found at ``url``."""
    parser = RobotFileParser(url)
    parser.parse(_round_up_delays(text.splitlines()))
    return RobotsRules(parser, sitemaps=[urljoin(url, s) for s in parser.site_maps() or []])


def _refusal_code(exc: BaseException | None) -> str | None:
    """The fetcher's refusal code (blocked_address, blocked_port) somewhere in the exception's chain, if any."""
    seen = 0
    while exc is not None and seen < 8:
        code = getattr(exc, "code", None)
        if isinstance(code, str) and code.startswith("blocked_"):
            return code
        if isinstance(exc, OSError) and type(exc).__name__ == "BlockedAddressError":
            return "blocked_address"
        exc = getattr(exc, "os_error", None) or exc.__cause__ or exc.__context__
        seen += 1
    return None


def unreachable_reason(exc: BaseException) -> str:
    """A stable code for a server that could not be reached at all (or that our network policy refused)."""
    refused = _refusal_code(exc)
    if refused is not None:
        return refused
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns_error"
    if isinstance(exc, TimeoutError):
        return "timeout"
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection_refused"
    return "network_error"


class RobotsCache:
    """One RobotsRules per origin, fetched at most once (concurrent callers share the fetch)."""

    def __init__(self, session: aiohttp.ClientSession, user_agent: str, *, respect: bool = True) -> None:
        self._session = session
        self.user_agent = user_agent
        self.respect = respect
        self._rules: dict[str, asyncio.Task[RobotsRules]] = {}

    async def rules(self, origin: str) -> RobotsRules:
        if origin not in self._rules:
            self._rules[origin] = asyncio.ensure_future(self._fetch(origin))
        return await asyncio.shield(self._rules[origin])

    async def _fetch(self, origin: str) -> RobotsRules:
        url = f"{origin}/robots.txt"
        try:
            resp = await get_capped(self._session, url, cap=ROBOTS_MAX_BYTES, timeout_s=ROBOTS_TIMEOUT_S)
        except TooLargeError:
            log.info("robots.txt at %s is too large; treated as absent", url)
            return RobotsRules(None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("robots.txt at %s unreachable (%s); nothing there is crawled", url, exc)
            return RobotsRules(None, unavailable=True, reason=unreachable_reason(exc))
        if resp.status >= 500:
            return RobotsRules(None, unavailable=True)
        if resp.status >= 400:
            return RobotsRules(None)
        return parse_robots(resp.body.decode("utf-8", errors="replace"), url)

    async def allowed(self, url: str, origin: str) -> tuple[bool, str | None]:
        """(allowed, error code if not) for a page URL."""
        if not self.respect:
            return True, None
        rules = await self.rules(origin)
        if rules.unavailable:
            return False, rules.reason or "robots_unavailable"
        if not rules.allowed(url, self.user_agent):
            return False, "robots_disallowed"
        return True, None

    async def crawl_delay(self, origin: str) -> float:
        return (await self.rules(origin)).crawl_delay(self.user_agent) if self.respect else 0.0

    def close(self) -> None:
        for task in self._rules.values():
            task.cancel()
