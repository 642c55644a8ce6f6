"""Reading a JSON body under a cap that fits what the route takes, not the whole ``max_body_bytes``.

pydantic parses JSON in Rust while holding the GIL, so a thread does not give the event loop back: a 25 MB
audit body of five million tiny list items held it for 2.9 s.  What bounds the stall is the size parsed,
so each JSON route reads at most what a valid body can need (413 ``body_too_large`` past it, whatever the
framing), and parsing costs at most about 0.15 s even for the most hostile shape of that size."""

from __future__ import annotations

from aiohttp import web

from scanner.api.problems import Problem

JSON_BODY_BYTES = 256 * 1024  # audits and feedback: a few URLs, patterns and short texts
_CHUNK = 64 * 1024


async def read_capped(request: web.Request, cap: int) -> bytes:
    """The body's bytes, refused (413) as soon as more than ``cap`` arrived or were declared."""
    if request.content_length is not None and request.content_length > cap:
        raise Problem(413, "body_too_large", f"the body exceeds {cap} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > cap:
            raise Problem(413, "body_too_large", f"the body exceeds {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
