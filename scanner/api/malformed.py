"""Requests that aiohttp's HTTP parser refuses (a control byte in a header value, a broken request line), answered
without repeating what the client sent.

aiohttp answers those itself, before any middleware runs: ``RequestHandler.handle_error`` logs the parser's
exception at ERROR with its traceback, and the 400 body is the exception's message, which quotes the offending
line: an ``Authorization: Bearer <key>\\x01`` header put the whole API key into the log and back on the wire.
In aiohttp 3.14 the only part of that path an application supplies is the connection handler's logger
(``web.Application(handler_args={"logger": ...})``), and ``handle_error`` calls it before it builds the
response.  So ``ProtocolLog`` logs one line naming the kind of error, and raises a problem document as an
``HTTPException``, which ``RequestHandler._handle_request`` sends in place of the echoing body."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from scanner.api.problems import PROBLEM_TYPE

MALFORMED = "malformed_request"


def refusal(err: HttpProcessingError) -> web.HTTPBadRequest:
    """The 400 for a request the parser refused: the kind of error only; its message quotes the request."""
    body = {
        "type": f"about:blank#{MALFORMED}",
        "title": "Bad Request",
        "status": 400,
        "code": MALFORMED,
        "detail": f"the request is not valid HTTP ({type(err).__name__}): e.g. a control character in a header",
    }
    refused = web.HTTPBadRequest(text=json.dumps(body), content_type=PROBLEM_TYPE)
    refused.force_close()  # the parser's state after a broken message is not to be trusted
    return refused


class ProtocolLog(logging.LoggerAdapter):
    """The logger of aiohttp's connection handler (``aiohttp.server``), for ``handler_args``: a parser error is
    logged as one line without the exception's text and answered by ``refusal``; anything else as before."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self._refuse(logging.WARNING, exc_info, args)
        super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        # aiohttp logs a bad method on a connection's first request at debug (TLS sent to an HTTP port)
        if isinstance(kwargs.get("exc_info"), HttpProcessingError):
            self._refuse(logging.DEBUG, kwargs["exc_info"], args)
        super().debug(msg, *args, **kwargs)

    def _refuse(self, level: int, err: HttpProcessingError, args: tuple[object, ...]) -> None:
        remote = args[0] if args else "unknown"
        self.log(level, "refused a malformed request from %s (%s)", remote, type(err).__name__)
        raise refusal(err)
