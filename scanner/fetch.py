"""SSRF-safe fetching of user-supplied image URLs.

The scanner fetches URLs that users hand it, from inside our network. Without care, such a fetch can be aimed at
``http://169.254.169.254/`` (cloud metadata), ``http://localhost:6379/``, an intranet admin page, or a URL that
streams forever. The rules, and why:

* Only ``http``/``https`` URLs with a host and without userinfo (``user:pass@``) are fetched; anything else
  (``file:``, ``data:``, ``javascript:``, ``ftp:``) is ``bad_url``. Ports are limited to ``allowed_ports``.
* The check is on the address actually connected to, not on the hostname. A custom resolver on the aiohttp
  connector resolves the name, drops every address that is not allowed and fails the connection when none
  remains; the connector then connects only to the addresses that passed. Checking first and fetching later
  would be open to DNS rebinding (the name resolves to a public address for the check and to 127.0.0.1 for
  the fetch); here there is one resolution and the connection uses its result.
* aiohttp skips the resolver for literal IP hosts, and C resolvers accept legacy forms such as ``2130706433``,
  ``0x7f.1`` or ``0177.0.0.1`` for 127.0.0.1. So literal hosts are checked before connecting: anything
  ``ipaddress`` parses, and anything ``socket.inet_aton`` accepts, is treated as that address. Legacy IPv4 forms
  of allowed addresses are refused as ``bad_url`` (parsers disagree on them, which is the point of using them).
  As a last line, the connector also checks the peer address of every connection it hands out.
* Allowed means ``ipaddress.ip_address(a).is_global`` and not multicast, after unwrapping IPv6 addresses that
  embed an IPv4 one (IPv4-mapped ``::ffff:0:0/96``, IPv4-compatible ``::/96``, 6to4 ``2002::/16``, NAT64
  ``64:ff9b::/96``) and checking the IPv4 address. ``0.0.0.0/8``, ``::``, broadcast and multicast are always
  refused (``0.0.0.0`` reaches the local host on Linux; imgproxy missed it, CVE-2025-24354), even with
  ``allow_private``. IPv6 must also lie in ``2000::/3``, the only globally allocated unicast space, and Teredo
  and the local-use NAT64 prefix are refused, so older Python tables cannot let such addresses through.
* Redirects are followed by hand, at most ``max_redirects``, and every Location is re-checked like the first URL
  (scheme, host, port) and connected through the same resolver.
* One deadline covers the whole URL, redirects included. The body is streamed and the fetch aborted as soon as
  more than ``max_bytes`` (after decompression) arrived; a larger Content-Length is refused before reading.
* No cookies are stored or sent and no proxy is taken from the environment.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.resolver import ThreadedResolver
from aiohttp.tracing import Trace
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FETCH_ERROR_CODES = frozenset(
    {
        "bad_url",
        "blocked_address",
        "blocked_port",
        "dns_failure",
        "too_many_redirects",
        "timeout",
        "too_large",
        "http_status",
        "connection_failed",
        "not_an_image",
    }
)

MAX_URL_LENGTH = 8192
_CHUNK_SIZE = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")

_ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n) for n in ("0.0.0.0/8", "255.255.255.255/32", "::/128")
)
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(n) for n in ("100.64.0.0/10", "2001::/32", "64:ff9b:1::/48")
)
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for one fetch; the defaults suit fetching public images for the API."""

    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    max_redirects: int = 3
    allow_private: bool = False
    allowed_ports: frozenset[int] | None = frozenset({80, 443})
    user_agent: str = "robust-image-scanner/0.1 (+image safety scan)"

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_redirects < 0:
            raise ValueError("max_bytes and max_redirects must not be negative")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")


class FetchError(Exception):
    """A fetch that did not produce an image; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, url: str) -> None:
        super().__init__(f"{code}: {message} ({url})")
        self.code = code
        self.message = message
        self.url = url

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "url": self.url}


@dataclass(frozen=True)
class Fetched:
    url: str
    final_url: str
    data: bytes
    content_type: str | None
    address: str


class BlockedAddressError(OSError):
    """Raised inside the connector when a host has no allowed address; becomes ``blocked_address``."""


class DNSLookupError(OSError):
    """Raised inside the connector when a name does not resolve; becomes ``dns_failure``."""


# --- addresses ---------------------------------------------------------------------------------------------------


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address embeds (mapped, NAT64, 6to4, compatible), else the address itself."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip in _IPV4_MAPPED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1, which are IPv6's own
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _parse_ip(address: str | IPAddress) -> IPAddress | None:
    if not isinstance(address, str):
        return address
    try:
        return ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def is_allowed_address(address: str | IPAddress, *, allow_private: bool = False) -> bool:
    """Whether connecting to ``address`` is allowed (see the module docstring for the rules)."""
    parsed = _parse_ip(address)
    if parsed is None:
        return False
    ip = _unwrap(parsed)
    if ip.is_multicast or any(ip in net for net in _ALWAYS_REFUSED if ip.version == net.version):
        return False
    if allow_private:
        return True
    if any(ip in net for net in _NOT_GLOBAL if ip.version == net.version):
        return False
    if ip.version == 6 and ip not in _IPV6_GLOBAL_UNICAST:
        return False
    return ip.is_global


def _describe(ip: IPAddress) -> str:
    """The address, with the IPv4 address it embeds: ``::ffff:7f00:1 (127.0.0.1)``."""
    inner = _unwrap(ip)
    return str(ip) if inner == ip else f"{ip} ({inner})"


def _literal_address(host: str) -> tuple[IPAddress | None, bool]:
    """(address, canonical) for a literal IP host, (None, True) for a name.

    Anything ``socket.inet_aton`` accepts (``2130706433``, ``0x7f.1``, ``0177.1``) is that IPv4 address,
    because that is what the C resolver would connect to.
    """
    bare = host.removesuffix(".")
    if "%" in bare:  # an IPv6 zone id or a percent-encoded host: never a literal we accept
        return None, True
    try:
        return ipaddress.ip_address(bare), bare == host
    except ValueError:
        pass
    if ":" in bare:
        return None, True
    try:
        packed = socket.inet_aton(bare)
    except OSError:
        return None, True
    return ipaddress.IPv4Address(packed), False


# --- URLs --------------------------------------------------------------------------------------------------------


def _has_userinfo(url: str) -> bool:
    """Whether the authority has an ``@``; yarl silently drops an empty userinfo (``http://@host/``)."""
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return True


def _parse_url(url: str) -> URL:
    if not isinstance(url, str) or not url.strip():
        raise FetchError("bad_url", "empty URL", str(url))
    if len(url) > MAX_URL_LENGTH:
        raise FetchError("bad_url", f"URL longer than {MAX_URL_LENGTH} characters", url[:200])
    try:
        parsed = URL(url.strip())
    except (ValueError, TypeError) as exc:
        raise FetchError("bad_url", f"unparseable URL: {exc}", url) from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError("bad_url", f"scheme {parsed.scheme or '(none)'!r} is not http or https", url)
    if not parsed.raw_host:
        raise FetchError("bad_url", "URL has no host", url)
    if _has_userinfo(url.strip()) or parsed.user is not None or parsed.password is not None:
        raise FetchError("bad_url", "credentials in the URL are not allowed", url)
    return parsed


def _check_host(host: str, url: str, policy: FetchPolicy) -> None:
    ip, canonical = _literal_address(host)
    if ip is None:
        if not set(host) <= _HOST_CHARS or ".." in host or host.startswith("."):
            raise FetchError("bad_url", f"invalid host name {host!r}", url)
        return
    if not is_allowed_address(ip, allow_private=policy.allow_private):
        raise FetchError("blocked_address", f"address {_describe(ip)} is not a public address", url)
    if not canonical:
        raise FetchError("bad_url", f"non-canonical IP address {host!r} (means {ip})", url)


def check_url(url: str, policy: FetchPolicy) -> URL:
    """Validate one hop's URL (scheme, userinfo, host, literal address, port) and return it parsed.

    Names are checked later, against the addresses they resolve to, by the connector's resolver.
    """
    parsed = _parse_url(url)
    _check_host(parsed.raw_host or "", url, policy)
    port = parsed.port
    if port is None or not 0 < port < 65536:
        raise FetchError("bad_url", f"invalid port {port}", url)
    if policy.allowed_ports is not None and port not in policy.allowed_ports:
        raise FetchError("blocked_port", f"port {port} is not allowed", url)
    return parsed


async def check_target(url: str, policy: FetchPolicy) -> None:
    """Refuse ``url`` now (FetchError) when the fetcher would refuse it: the URL rules, then the addresses its
    name resolves to.  For targets stored to be fetched later (an audit's start URL); the later fetches are
    checked again at connect time, since names may resolve differently by then."""
    hop = check_url(url, policy)
    host = hop.raw_host or ""
    if _literal_address(host)[0] is not None:
        return
    resolver = GuardedResolver(policy, ThreadedResolver())
    try:
        await resolver.resolve(host, hop.port or 0, socket.AF_UNSPEC)
    except BlockedAddressError as err:
        raise FetchError("blocked_address", str(err), url) from None
    except DNSLookupError:
        pass  # a name that does not resolve today may tomorrow; the crawl checks it at connect time
    finally:
        await resolver.close()


# --- connector ---------------------------------------------------------------------------------------------------


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and keeps only the allowed addresses; raises when none is left."""

    def __init__(self, policy: FetchPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            infos = await self._inner.resolve(host, port, family)
        except OSError as exc:
            raise DNSLookupError(f"cannot resolve {host}: {exc}") from exc
        if not infos:
            raise DNSLookupError(f"cannot resolve {host}: no addresses")
        allowed = [i for i in infos if is_allowed_address(i["host"], allow_private=self._policy.allow_private)]
        if not allowed:
            # The addresses are not named: an error message must not tell a tenant what internal names resolve to.
            raise BlockedAddressError(f"{host} resolves only to addresses that are not allowed")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


# The fetch in progress in this task: where the connector reports the peer address of the connection it hands out.
_PEER: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("scanner_fetch_peer", default=None)


class GuardedConnector(aiohttp.TCPConnector):
    """TCPConnector that re-checks and reports the peer address of every connection (new or pooled)."""

    def __init__(self, policy: FetchPolicy, resolver: AbstractResolver) -> None:
        super().__init__(resolver=resolver, use_dns_cache=False)
        self._policy = policy

    async def connect(self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        # Every connection, including the redirects a caller lets aiohttp follow, obeys the URL rules (port,
        # scheme, literal addresses); names are checked by the resolver, the peer address below.
        try:
            check_url(str(req.url), self._policy)
        except FetchError as err:
            raise BlockedAddressError(f"{err.code}: {err.message}") from None
        conn = await super().connect(req, traces, timeout)
        transport = conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        address = str(peer[0]) if peer else ""
        if not is_allowed_address(address, allow_private=self._policy.allow_private):
            conn.close()
            raise BlockedAddressError("the address connected to is not allowed")  # never named, as above
        sink = _PEER.get()
        if sink is not None:
            sink.append(address)
        return conn


# --- fetching ----------------------------------------------------------------------------------------------------


def _our_error(exc: BaseException) -> BaseException:
    """The BlockedAddressError or DNSLookupError behind what aiohttp raised (it wraps them), else ``exc``."""
    seen: BaseException | None = exc
    for _ in range(8):  # aiohttp nests a couple of levels at most
        if seen is None:
            break
        if isinstance(seen, BlockedAddressError | DNSLookupError):
            return seen
        seen = seen.os_error if isinstance(seen, aiohttp.ClientConnectorError) else seen.__cause__
    return exc


def _map_error(exc: BaseException, url: str, hop: URL) -> FetchError:
    """Translate what aiohttp raised into a FetchError."""
    where = f" ({hop})" if str(hop) != url else ""
    os_error = _our_error(exc)
    if os_error is exc and isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
    if isinstance(os_error, BlockedAddressError):
        return FetchError("blocked_address", f"{os_error}{where}", url)
    if isinstance(os_error, DNSLookupError | aiohttp.ClientConnectorDNSError):
        return FetchError("dns_failure", f"{os_error}{where}", url)
    if isinstance(exc, TimeoutError) or isinstance(os_error, TimeoutError):
        return FetchError("timeout", f"timed out{where}", url)
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchError("bad_url", f"{exc}{where}", url)
    return FetchError("connection_failed", f"{type(exc).__name__}: {exc}{where}", url)


def as_fetch_error(exc: BaseException, url: str) -> FetchError:
    """What a request to ``url`` made with a ``GuardedConnector`` raised, as the fetcher's error (a name that
    resolves only to refused addresses is ``blocked_address``, not the DNS error aiohttp wraps it in)."""
    if isinstance(exc, FetchError):
        return exc
    try:
        hop = URL(url)
    except (ValueError, TypeError):
        return FetchError("bad_url", "unparseable URL", url)
    return _map_error(exc, url, hop)


def _content_type(resp: aiohttp.ClientResponse, url: str) -> str | None:
    """The media type if the server sent one; refuses types that are clearly not images."""
    if not resp.headers.get("Content-Type", "").strip():
        return None
    mime = resp.content_type.lower()
    if "/" in mime and not (mime.startswith("image/") or mime == "application/octet-stream"):
        raise FetchError("not_an_image", f"Content-Type {mime} is not an image", url)
    return mime


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, url: str) -> bytes:
    """The (decompressed) body, refused as soon as it is longer than ``cap``."""
    length = resp.content_length
    if length is not None and length > cap:
        resp.close()
        raise FetchError("too_large", f"Content-Length {length} exceeds the limit of {cap} bytes", url)
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK_SIZE):
        body += chunk
        if len(body) > cap:
            resp.close()
            raise FetchError("too_large", f"body exceeds the limit of {cap} bytes", url)
    return bytes(body)


@dataclass(frozen=True)
class _Redirect:
    location: str


class SafeFetcher:
    """Fetches user-supplied image URLs under a FetchPolicy; use as ``async with SafeFetcher() as f``."""

    def __init__(self, policy: FetchPolicy = FetchPolicy()) -> None:
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SafeFetcher:
        if self._session is not None:
            raise RuntimeError("SafeFetcher is already open")
        resolver = GuardedResolver(self.policy, ThreadedResolver())
        self._session = aiohttp.ClientSession(
            connector=GuardedConnector(self.policy, resolver),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=True,
            timeout=aiohttp.ClientTimeout(total=self.policy.timeout_s, connect=self.policy.connect_timeout_s),
            headers={"User-Agent": self.policy.user_agent, "Accept": "image/*, */*;q=0.5"},
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def fetch(self, url: str) -> Fetched:
        """Fetch one URL; raises FetchError (never aiohttp's exceptions) when there is no image."""
        if self._session is None:
            raise RuntimeError("use SafeFetcher inside 'async with'")
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await self._follow(self._session, url)
        except TimeoutError:
            raise FetchError("timeout", f"no complete response within {self.policy.timeout_s} s", str(url)) from None

    async def fetch_many(self, urls: Sequence[str], concurrency: int = 8) -> list[Fetched | FetchError]:
        """Fetch several URLs, at most ``concurrency`` at a time; results (or errors) in the order of ``urls``."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(url: str) -> Fetched | FetchError:
            async with gate:
                try:
                    return await self.fetch(url)
                except FetchError as exc:
                    return exc

        return list(await asyncio.gather(*(one(u) for u in urls)))

    async def _follow(self, session: aiohttp.ClientSession, url: str) -> Fetched:
        hop = check_url(url, self.policy)
        for redirects in range(self.policy.max_redirects + 1):
            result = await self._request(session, url, hop)
            if isinstance(result, Fetched):
                return result
            if redirects == self.policy.max_redirects:
                break
            hop = self._next_hop(url, hop, result.location)
        raise FetchError("too_many_redirects", f"more than {self.policy.max_redirects} redirects", url)

    def _next_hop(self, url: str, hop: URL, location: str) -> URL:
        try:
            target = str(hop.join(URL(location)))
        except (ValueError, TypeError):
            raise FetchError("bad_url", f"unparseable redirect Location {location!r}", url) from None
        try:
            return check_url(target, self.policy)
        except FetchError as exc:
            raise FetchError(exc.code, f"redirect to {target}: {exc.message}", url) from None

    async def _request(self, session: aiohttp.ClientSession, url: str, hop: URL) -> Fetched | _Redirect:
        peers: list[str] = []
        token = _PEER.set(peers)
        try:
            async with session.get(hop, allow_redirects=False) as resp:
                return await self._handle(resp, url, hop, peers)
        except (aiohttp.ClientError, OSError) as exc:
            raise _map_error(exc, url, hop) from exc
        finally:
            _PEER.reset(token)

    async def _handle(self, resp: aiohttp.ClientResponse, url: str, hop: URL, peers: list[str]) -> Fetched | _Redirect:
        if not peers:  # the connector reports every connection; without one we cannot vouch for the address
            raise FetchError("connection_failed", "could not determine the address connected to", url)
        location = resp.headers.get("Location")
        if resp.status in _REDIRECT_STATUSES and location:
            return _Redirect(location)
        if not 200 <= resp.status < 300:
            raise FetchError("http_status", f"HTTP status {resp.status} from {hop}", url)
        content_type = _content_type(resp, url)
        data = await _read_capped(resp, self.policy.max_bytes, url)
        return Fetched(url=url, final_url=str(hop), data=data, content_type=content_type, address=peers[-1])
