"""Event streams (``GET /v1/scans/{id}/events``) against a real server: a stream ends when its client leaves
(the open-stream count in ``/metrics`` drops to 0), a key holds at most ``event_streams_per_key`` of them, and
shutdown ends the open ones at once instead of waiting for them.

The scans stay pending throughout: the API hands work to a real Redis that no worker reads."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import aiohttp
import pytest

from scanner.settings import Settings
from tests.support.api import RunningApi, http, start_api, upload
from tests.support.images import random_png
from tests.support.waiting import wait_for

GENEROUS = aiohttp.ClientTimeout(total=60)


@pytest.fixture
def stream_api(tmp_path: Path, broker_url: str) -> RunningApi:
    settings = Settings(
        data_dir=tmp_path,
        broker_url=broker_url,
        event_streams_per_key=3,
        rate_limit_per_minute=100_000,
        rate_limit_burst=100_000,
    )
    return start_api(settings)


def pending_scan(api: RunningApi, key: str) -> str:
    reply = http("POST", f"{api.base}/v1/scans", key, data=upload(random_png(901)))
    assert reply.status == 202
    return reply.json()["id"]


def open_streams(api: RunningApi) -> float:
    metrics = http("GET", f"{api.base}/metrics").body.decode()
    return float(re.search(r"^scanner_open_event_streams (\S+)$", metrics, re.M).group(1))


async def first_event(response: aiohttp.ClientResponse) -> str:
    async for line in response.content:
        if line.startswith(b"event: "):
            return line[7:].strip().decode()
    raise AssertionError("the stream ended before its first event")


async def remaining_events(response: aiohttp.ClientResponse) -> list[str]:
    return [line[7:].strip().decode() async for line in response.content if line.startswith(b"event: ")]


def test_streams_end_when_their_clients_leave(stream_api: RunningApi) -> None:
    api = stream_api
    try:
        key = api.new_key()
        scan_id = pending_scan(api, key)

        async def open_then_leave() -> float:
            sessions = [aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) for _ in range(3)]
            replies = [await s.get(f"{api.base}/v1/scans/{scan_id}/events", timeout=GENEROUS) for s in sessions]
            assert [await first_event(r) for r in replies] == ["progress"] * 3
            during = await asyncio.to_thread(open_streams, api)
            for session in sessions:  # the clients leave while their scan is still pending
                await session.close()
            return during

        assert asyncio.run(open_then_leave()) == 3
        wait_for(lambda: open_streams(api) == 0, 30, 0.1, "the server to end the streams of departed clients")
    finally:
        api.stop()


def test_a_key_holds_at_most_its_cap_of_streams(stream_api: RunningApi) -> None:
    api = stream_api
    try:
        key, other = api.new_key(), api.new_key("other")
        scan_id = pending_scan(api, key)
        url = f"{api.base}/v1/scans/{scan_id}/events"

        async def over_the_cap() -> tuple[int, dict, str]:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
                held = [await session.get(url, timeout=GENEROUS) for _ in range(3)]
                assert [r.status for r in held] == [200] * 3
                async with session.get(url, timeout=GENEROUS) as refused:
                    body, retry_after = await refused.json(content_type=None), refused.headers.get("Retry-After")
                    status = refused.status
                for reply in held:
                    reply.close()
            return status, body, retry_after or ""

        status, body, retry_after = asyncio.run(over_the_cap())
        assert status == 429 and body["code"] == "too_many_streams" and retry_after.isdigit()
        # The first key's slots come back once its streams have ended; another key (same tenant) has its own.
        wait_for(lambda: open_streams(api) == 0, 30, 0.1, "the refused key's streams to end")

        async def one_stream(token: str) -> str:
            async with (
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
                session.get(url, timeout=GENEROUS) as reply,
            ):
                return await first_event(reply) if reply.status == 200 else str(reply.status)

        assert asyncio.run(one_stream(key)) == "progress"
        assert asyncio.run(one_stream(other)) == "progress"
    finally:
        api.stop()


def test_shutdown_ends_open_streams(stream_api: RunningApi) -> None:
    api = stream_api
    key = api.new_key()
    scan_id = pending_scan(api, key)
    stopped = threading.Event()

    async def streams_during_shutdown() -> list[list[str]]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            replies = [await session.get(f"{api.base}/v1/scans/{scan_id}/events", timeout=GENEROUS) for _ in range(3)]
            assert [await first_event(r) for r in replies] == ["progress"] * 3
            stopper = threading.Thread(target=lambda: (api.stop(), stopped.set()), daemon=True)
            stopper.start()
            ends = await asyncio.gather(*(remaining_events(r) for r in replies))
            await asyncio.to_thread(stopper.join, 50)
            return ends

    ends = asyncio.run(streams_during_shutdown())
    assert stopped.is_set(), "the server did not stop with event streams open"
    assert ends == [["closing"]] * 3  # each stream was ended by the server, and said why
