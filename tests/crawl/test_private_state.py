"""Crawl state is its owner's only, whatever the umask: the frontier and images a crawl met (``crawls/``), the
SQLite file with its -wal, -shm and lock files, and the outcome summary; a data folder left 0755 by an earlier
version is tightened.  Run in a child process started under umask 000."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import json, sys
from pathlib import Path
from scanner.crawl import CrawlConfig
from scanner.crawl.state import CrawlState
from scanner.cli.crawl import default_state_path
from scanner.crawl.scan import CrawlOutcome, _keep_outcome
from scanner.settings import Settings

settings = Settings(data_dir=Path(sys.argv[1]))
path = default_state_path(settings, "http://shop.example:8080/")
state = CrawlState(path, resume=False)
state.set_meta("written", "yes")  # a write: SQLite has its -wal and -shm files while the state is open
files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
state.close()
config = CrawlConfig(start_url="http://shop.example:8080/", state_path=path)
_keep_outcome(config, CrawlOutcome(site="shop.example", mode="embedded"))
outcome = path.with_suffix(".outcome.json")
modes[outcome.name] = oct(outcome.stat().st_mode & 0o777)
modes["crawls"] = oct(path.parent.stat().st_mode & 0o777)
modes["data"] = oct(path.parent.parent.stat().st_mode & 0o777)
print(json.dumps(modes))
"""


def _umask_000() -> None:
    os.umask(0)


def test_crawl_state_is_private_under_umask_000(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # as an earlier version, or a permissive umask, left it
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_umask_000,  # the child only sets its umask before exec
        check=True,
    )
    modes = json.loads(result.stdout.strip().splitlines()[-1])
    state = "shop.example_8080.sqlite"
    assert modes == {
        state: "0o600",
        f"{state}-wal": "0o600",
        f"{state}-shm": "0o600",
        f"{state}.lock": "0o600",
        "shop.example_8080.outcome.json": "0o600",
        "crawls": "0o700",
        "data": "0o700",
    }
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_a_folder_the_user_named_is_left_as_it_is(tmp_path: Path) -> None:
    """A state file beside the user's own files: the file is private, the folder keeps its mode."""
    from scanner.crawl.state import CrawlState

    folder = tmp_path / "mine"
    folder.mkdir()
    folder.chmod(0o755)
    state = CrawlState(folder / "crawl.sqlite", resume=False)
    state.close()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "crawl.sqlite").stat().st_mode) == 0o600
