"""Real services for the service tests: a Redis server of our own (so a test may restart it), a throw-away
PostgreSQL database on the machine's server, the API on a real socket, and Celery worker processes."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import create_engine, text

from scanner.api import create_app
from scanner.db import keys, migrate
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SCANNER = str(Path(sys.executable).with_name("scanner"))
POSTGRES_ADMIN_URL = os.environ.get("SCANNER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


# --- Redis ------------------------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `apt-get install redis-server` (scripts/test.sh does it)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, what="redis-server to accept connections")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


# --- PostgreSQL -------------------------------------------------------------------------------------------------


def _postgres_reachable() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Callable[[], str]]:
    """Makes fresh databases on the machine's PostgreSQL (scripts/test.sh starts the server when it is down);
    drops them all at the end of the session."""
    if not _postgres_reachable():
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} (set SCANNER_TEST_POSTGRES)")
    admin = create_engine(
        POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    names: list[str] = []

    def create() -> str:
        name = f"scanner_test_{os.getpid()}_{secrets.token_hex(3)}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        names.append(name)
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url(postgres_databases: Callable[[], str]) -> str:
    return postgres_databases()


_redis_db = iter(range(1, 16))


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    """A Redis database of its own per test, so that no test sees another's leftover messages."""
    return f"redis://127.0.0.1:{redis_server.port}/{next(_redis_db)}"


# --- the API on a real socket -------------------------------------------------------------------------------------


@dataclass
class RunningApi:
    settings: Settings
    base: str
    stop: Callable[[], None]
    keys: dict[str, str] = field(default_factory=dict)

    def new_key(self, name: str = "test", tenant: str = "default", **options: Any) -> str:
        sessions = make_sessionmaker(make_engine(self.settings.db_url))
        with transaction(sessions) as session:
            return keys.create_key(session, name, tenant, **options).token


def start_api(settings: Settings, engine: Any = None) -> RunningApi:
    """The app in a thread with its own event loop, on a free port; ``stop()`` shuts it down cleanly."""
    migrate.upgrade(settings.db_url)
    ready, holder = threading.Event(), {}
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        runner = web.AppRunner(create_app(settings, engine), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["port"] = runner.addresses[0][1]
        holder["runner"] = runner
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as err:  # noqa: BLE001 - reported to the waiting test
            holder["error"] = err
            ready.set()
            return
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(120)
    if "error" in holder:
        raise holder["error"]

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return RunningApi(settings, f"http://127.0.0.1:{holder['port']}", stop)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def http(method: str, url: str, key: str | None = None, **kwargs: Any) -> Reply:
    """One request with a fresh client (tests are synchronous; the server runs in its own thread)."""
    headers = dict(kwargs.pop("headers", {}))
    if key:
        headers["Authorization"] = f"Bearer {key}"

    async def go() -> Reply:
        async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers, **kwargs) as r:
            return Reply(r.status, dict(r.headers), await r.read())

    return asyncio.run(go())


def upload(*images: bytes, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for i, data in enumerate(images):
        form.add_field("image", data, filename=f"image{i}.png", content_type="image/png")
    return form


def verdict_with_score(model_version: str, calibration_version: str, label: str, score: float) -> dict:
    """A verdict as the engine writes it, flagged when ``score`` is above 1 (the threshold)."""
    return {
        "model_version": model_version,
        "calibration_version": calibration_version,
        "label": label,
        "label_index": 0,
        "confidence": 0.9,
        "top_k": [[label, 0.9]],
        "scores": {"kl_rs": score},
        "combined": score,
        "flagged": score > 1.0,
        "threshold": 1.0,
        "timings_ms": {"inference": 1.0},
    }


# --- Celery workers ------------------------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def service_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SCANNER_DATA_DIR=str(settings.data_dir),
        SCANNER_DATABASE_URL=settings.db_url,
        SCANNER_BROKER_URL=settings.broker_url or "",
        SCANNER_BATCH_SIZE=str(settings.batch_size),
        SCANNER_MAX_DELIVERIES=str(settings.max_deliveries),
        SCANNER_BROKER_VISIBILITY_TIMEOUT_S=str(settings.broker_visibility_timeout_s),
        SCANNER_ENGINE_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
        process = subprocess.Popen(
            [SCANNER, "worker", "--concurrency", "1", "--loglevel", "INFO"],
            env=service_env(settings),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        worker = WorkerProcess(process, log)
        started.append(worker)
        wait_for(lambda: "ready." in worker.log_text() or process.poll() is not None, 120, what="worker ready")
        assert process.poll() is None, f"the worker exited:\n{worker.log_text()[-3000:]}"
        return worker

    yield start
    for worker in started:
        worker.stop()
