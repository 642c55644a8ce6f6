"""The open event streams (``GET /v1/scans/{id}/events``) of one API process: a cap per key, a count in
``/metrics``, and an end at shutdown.

Why: a stream polls the database until its scan is done (up to ``SSE_MAX_S``), so streams whose clients left
kept polling for minutes, and shutdown waited for all of them.  A stream now ends when its client leaves
(``client_gone``), a key holds at most ``event_streams_per_key`` of them, and ``on_shutdown`` wakes and ends
every stream before aiohttp waits for the handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from scanner.api.context import services
from scanner.api.problems import Problem


@dataclass
class EventStreams:
    per_key: int
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    open_by_key: Counter[str] = field(default_factory=Counter)

    @property
    def open(self) -> int:
        return sum(self.open_by_key.values())


STREAMS = web.AppKey("event_streams", EventStreams)


def install(app: web.Application, per_key: int) -> None:
    app[STREAMS] = EventStreams(per_key)
    app.on_shutdown.append(_close_all)


async def _close_all(app: web.Application) -> None:
    app[STREAMS].closing.set()


@contextlib.asynccontextmanager
async def stream_slot(request: web.Request, key_id: str) -> AsyncIterator[EventStreams]:
    """Hold one of the key's stream slots for the block: 429 ``too_many_streams`` when the key holds them all."""
    streams = request.app[STREAMS]
    if streams.closing.is_set():
        raise Problem(503, "shutting_down", "the server is shutting down", {"Retry-After": "5"})
    if streams.open_by_key[key_id] >= streams.per_key:
        raise Problem(
            429,
            "too_many_streams",
            f"a key may hold at most {streams.per_key} open event streams; close one first",
            {"Retry-After": "5"},
        )
    gauge = services(request).metrics.event_streams
    streams.open_by_key[key_id] += 1
    gauge.inc()
    try:
        yield streams
    finally:
        streams.open_by_key[key_id] -= 1
        if streams.open_by_key[key_id] <= 0:
            del streams.open_by_key[key_id]
        gauge.dec()


def client_gone(request: web.Request) -> bool:
    """The client closed the connection (aiohttp does not cancel the handler: it must look)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def pause(streams: EventStreams, seconds: float) -> bool:
    """Wait ``seconds`` between polls; True when the server is shutting down (then at once)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(streams.closing.wait(), seconds)
    return streams.closing.is_set()
