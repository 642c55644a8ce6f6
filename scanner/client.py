"""A small asynchronous client of the scanner API, used by ``scanner crawl --api`` and ``scanner report --api``.

Without ``--api`` a crawl talks no HTTP: it submits through the intake in its own process (``scanner.local``,
which answers the same ``whoami``/``submit``/``scan`` calls), so the crawl does not know which of the two it feeds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp


class ApiError(Exception):
    """A problem document from the API (or a transport failure), with its stable ``code``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        # No status (the transport failed): the detail alone says it, without a "0 unreachable" prefix.
        super().__init__(f"{status} {code}: {detail}" if status else detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class Upload:
    data: bytes
    url: str | None
    filename: str = "image"


class ScannerClient:
    def __init__(self, base_url: str, key: str, timeout_s: float = 120.0, retries: int = 4) -> None:
        self.base_url, self.key = base_url.rstrip("/"), key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self._answered = False  # a server that never answered is not retried: see _request
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ScannerClient:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.key}"}, timeout=self.timeout, trust_env=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def submit(self, page_url: str | None, uploads: Sequence[Upload], source: str = "crawl") -> dict[str, Any]:
        """One scan of these image files, as seen on ``page_url``."""

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            if page_url:
                data.add_field("page_url", page_url)
            data.add_field("source", source)
            data.add_field("image_urls", json.dumps([upload.url for upload in uploads]))
            for upload in uploads:
                data.add_field("image", upload.data, filename=upload.filename, content_type="application/octet-stream")
            return data

        return await self._request("POST", "/v1/scans", form=form)

    async def scan(self, scan_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/v1/scans/{scan_id}")

    async def flagged(self, **params: str) -> dict[str, Any]:
        return await self._request("GET", "/v1/reports/flagged", params={k: v for k, v in params.items() if v})

    async def whoami(self) -> dict[str, Any]:
        """The key's id, tenant and scopes: raises ``ApiError`` (invalid_key, expired_key, ...) before any work."""
        return await self._request("GET", "/v1/me")

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/healthz")

    async def _request(self, method: str, path: str, form: Any = None, params: dict[str, str] | None = None) -> Any:
        """JSON of a 2xx answer; 429 and 5xx are retried with back-off (honouring Retry-After)."""
        assert self._session is not None, "use `async with ScannerClient(...)`"
        for attempt in range(self.retries + 1):
            try:
                async with self._session.request(
                    method, self.base_url + path, data=form() if form else None, params=params
                ) as reply:
                    self._answered = True
                    if reply.status < 400:
                        return await reply.json()
                    problem = await _problem(reply)
                    retry_after = reply.headers.get("Retry-After", "")
            except aiohttp.ClientConnectorError as err:
                if not self._answered:  # nothing listens there (or no such host): retrying only delays saying so
                    raise ApiError(0, "unreachable", self._unreachable(err)) from None
                problem, retry_after = ApiError(0, "unreachable", f"{self.base_url}: {err}"), ""
            except (aiohttp.ClientError, TimeoutError) as err:
                problem, retry_after = ApiError(0, "unreachable", f"{self.base_url}: {err or type(err).__name__}"), ""
            if problem.status not in (0, 429, 502, 503, 504) or attempt == self.retries:
                raise problem
            await asyncio.sleep(float(retry_after) if retry_after.isdigit() else 0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _unreachable(self, err: aiohttp.ClientConnectorError) -> str:
        reason = err.os_error.strerror if err.os_error is not None and err.os_error.strerror else str(err.os_error)
        return f"cannot reach the scanner API at {self.base_url} ({reason}): is `scanner serve` running there?"


async def _problem(reply: aiohttp.ClientResponse) -> ApiError:
    try:
        body = await reply.json(content_type=None)
        return ApiError(reply.status, body.get("code", "error"), body.get("detail", reply.reason or ""))
    except (ValueError, aiohttp.ContentTypeError):
        return ApiError(reply.status, "http_error", reply.reason or "")
