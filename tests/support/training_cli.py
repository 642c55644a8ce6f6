"""The ``python -m training`` command as a user runs it: a subprocess from the repository, with its own cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.commands import REPO


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
