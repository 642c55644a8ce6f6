"""Errors crossing the API are RFC 9457 problem documents with a stable ``code``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        body = {
            "type": f"about:blank#{self.code}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            **self.extra,
        }
        return web.Response(status=self.status, text=json.dumps(body), content_type=PROBLEM_TYPE, headers=self.headers)


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# aiohttp's own HTTP errors (routing, body size) mapped onto stable codes.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def from_http_exception(err: web.HTTPException) -> Problem:
    headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
    detail = err.text if err.text and not err.text.startswith(f"{err.status}:") else err.reason
    return Problem(err.status, _HTTP_CODES.get(err.status, "http_error"), detail or err.reason, headers)
