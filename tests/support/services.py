"""Real services for the tests that need them: a Redis server of our own (so a test may restart it), the machine's
PostgreSQL server, and Celery worker processes (``scanner worker``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from scanner.settings import Settings
from tests.support.waiting import wait_for

POSTGRES_ADMIN_URL = os.environ.get("SCANNER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


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


def postgres_reachable() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


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
