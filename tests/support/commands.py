"""Running the ``scanner`` command the way a person does: subprocesses with a clean ``SCANNER_*`` environment, and
``scanner serve`` as a long-running process that the test stops with Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SCANNER = str(Path(sys.executable).with_name("scanner"))


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANNER_")}
    env.update(SCANNER_DATA_DIR=str(data_dir), SCANNER_ENGINE_THREADS="1", OMP_NUM_THREADS="1", COLUMNS="200")
    env.update(extra)
    return env


def scanner(data_dir: Path, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCANNER, *args], env=environment(data_dir, **extra), capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Serving:
    process: subprocess.Popen[str]
    base: str
    output: str = ""

    def get_json(self, path: str, key: str | None = None) -> Any:
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.load(reply)


@contextmanager
def serving(data_dir: Path, *args: str, **extra: str) -> Iterator[Serving]:
    """``scanner serve`` on a free loopback port until the block ends; then Ctrl-C, and its output is kept."""
    port = free_port()
    process = subprocess.Popen(
        [SCANNER, "serve", "--port", str(port), *args],
        env=environment(data_dir, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Serving(process, f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"scanner serve exited: {process.communicate()[0]}")
        try:
            return bool(served.get_json("/healthz"))
        except OSError:
            return False

    try:
        wait_for(healthy, 180, 0.2, "scanner serve")
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        served.output = process.communicate(timeout=120)[0]
