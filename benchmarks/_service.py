"""The scanner service as subprocesses, for benchmarks: a private ``redis-server``, a temporary data folder, the
schema, one API key, ``scanner serve`` and ``scanner worker --concurrency 1``.

``with Service(config) as service:`` starts everything (the worker's readiness is for the caller to check: it
loads the models in its child process) and stops every process it started on the way out, errors and Ctrl-C
included.  Each child runs in its own session, so stopping signals its whole process group (the Celery worker's
pool child too) and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent
SCANNER = REPO_ROOT / ".venv" / "bin" / "scanner"
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30


class ServiceError(RuntimeError):
    """A process of the service could not be started, or died."""


@dataclass
class ServiceConfig:
    batch: int
    threads: int
    robust: Path
    standard: Path
    device: str = "auto"
    database_url: str | None = None  # default: a SQLite file in the temporary data folder
    keep_data: bool = False
    startup_timeout_s: float = 90.0
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def thread_env(threads: int) -> dict[str, str]:
    """The variables that fix a process's BLAS/OpenMP thread pools (set before torch is imported)."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Service:
    """Redis, the API and one worker on loopback; ``base_url`` and ``api_key`` once started."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.children: list[_Child] = []
        self.data_dir = Path(tempfile.mkdtemp(prefix="scanner-bench-"))
        self.redis_port = free_port()
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.api_key = ""

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> Service:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            raise ServiceError("redis-server is not on PATH: apt-get install redis-server")
        self._start_redis()
        self._run_cli("db", "upgrade")
        created = json.loads(self._run_cli("keys", "create", "--name", "bench", "--json"))
        self.api_key = str(created["key"])
        self._spawn("api", [str(SCANNER), "serve"])
        self._wait_http_ok(f"{self.base_url}/healthz", "api")
        self._spawn("worker", [str(SCANNER), "worker", "--concurrency", "1"])

    def stop(self) -> None:
        """SIGTERM to each child's process group, newest first; SIGKILL after a grace period."""
        for child in reversed(self.children):
            _stop_group(child.process)
            child.log_file.close()
        self.children.clear()
        if not self.config.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def check_alive(self) -> None:
        """Raise ``ServiceError`` with the log's tail if a child has exited."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise ServiceError(f"{child.name} exited with status {code}; its log ends:\n{_tail(child.log_path)}")

    # --- pieces ------------------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment of every child: the settings of this deployment, strongest source."""
        c = self.config
        env = dict(os.environ)
        env.pop("SCANNER_SETTINGS_FILE", None)
        env.update(thread_env(c.threads))
        env.update(
            SCANNER_DATA_DIR=str(self.data_dir),
            SCANNER_DATABASE_URL=c.database_url or f"sqlite:///{self.data_dir / 'scanner.db'}",
            SCANNER_BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            SCANNER_HOST="127.0.0.1",
            SCANNER_PORT=str(self.api_port),
            SCANNER_RATE_LIMIT_PER_MINUTE="1000000",
            SCANNER_RATE_LIMIT_BURST="1000000",
            SCANNER_BATCH_SIZE=str(c.batch),
            SCANNER_ENGINE_THREADS=str(c.threads),
            SCANNER_ROBUST_BUNDLE=str(c.robust),
            SCANNER_STANDARD_BUNDLE=str(c.standard),
            SCANNER_DEVICE=c.device,
        )
        env.update(c.extra_env)
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.data_dir / f"{name}.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.children.append(_Child(name, process, log_path, log_file))

    def _run_cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(SCANNER), *args], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise ServiceError(f"`scanner {' '.join(args)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout

    def _start_redis(self) -> None:
        argv = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                "no", "--dir", str(self.data_dir)]  # fmt: skip
        self._spawn("redis", argv)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self.check_alive()
            if _redis_pong(self.redis_port):
                return
            time.sleep(0.05)
        raise ServiceError(f"redis-server did not answer PING on port {self.redis_port} within 15 s")

    def _wait_http_ok(self, url: str, name: str) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}: {err.read()[:300]!r}"
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(0.1)
        raise ServiceError(f"{name} did not answer 200 at {url} in {self.config.startup_timeout_s:g} s ({last})")


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """The child leads its own process group (``start_new_session``): signal that group, by its id."""
    if process.poll() is not None:
        _signal_group(process.pid, signal.SIGKILL)  # a leader that died early may leave its pool children
        return
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
