"""Worker heartbeats: each process that runs analysis tasks writes a key with a short TTL to the broker's Redis
every few seconds, and ``/healthz`` counts the live keys.

Why our own key and not Celery's: Celery's heartbeats are events (off under ``--without-gossip`` and without
``-E``), and a ``ping`` broadcast costs the API a round trip to every worker.  A key with a TTL costs one
``SET`` per worker every ``HEARTBEAT_S`` and disappears on its own when the process dies, however it dies.

Written by the process that executes tasks (a pool child under prefork, the worker itself under solo/threads),
so a worker whose children are dead, or never loaded the model, shows no heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

import redis

log = logging.getLogger(__name__)
PREFIX = "scanner:worker-heartbeat:"
HEARTBEAT_S = 2.0
TTL_S = 10  # several missed beats before a worker counts as gone: a busy machine may delay one
TIMEOUT_S = 1.0  # a Redis that does not answer must not hold the beat (nor the API's probe) for long


def client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)


def beat_once(connection: redis.Redis, name: str) -> None:
    connection.set(PREFIX + name, str(time.time()), ex=TTL_S)


def live_workers(connection: redis.Redis) -> int:
    """How many worker processes beat within the last ``TTL_S`` seconds (raises on a Redis error)."""
    return sum(1 for _ in connection.scan_iter(match=PREFIX + "*", count=100))


def start(broker_url: str) -> threading.Thread:
    """Beat from a daemon thread of this process until it exits (or its parent, a prefork worker, dies)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    parent = os.getppid()
    connection = client(broker_url)

    def run() -> None:
        while os.getppid() == parent:  # an orphaned pool child takes no more tasks: stop beating
            try:
                beat_once(connection, name)
            except redis.RedisError as err:  # a broker outage: beat again when it is back
                log.debug("heartbeat not written: %s", err)
            time.sleep(HEARTBEAT_S)
        with contextlib.suppress(redis.RedisError):
            connection.delete(PREFIX + name)

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    return thread
