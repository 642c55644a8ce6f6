"""Files only their owner may read, whatever the umask: crawl state holds the pages and images a crawl met (an
audit's crawl, a tenant's), and summaries of them.

``mkdir``/``open`` modes are masked by the umask, which only removes bits, so creating with 0700/0600 is
private under any umask; a folder or file that already exists (created by an earlier version, or by a
permissive umask) is tightened when it is ours.  Folders the user named are created private but left as
they are when they exist: a crawl state beside a user's other files must not change the folder's mode.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path, *, tighten: bool = False) -> None:
    """Create ``path`` and its missing parents with mode 0700; ``tighten``: an existing ``path`` of ours
    loses every group and other permission."""
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process: tightened below
            created.mkdir(mode=DIR_MODE)
            created.chmod(DIR_MODE)  # exactly, under an umask that removed the owner's bits too
    if tighten:
        _tighten(path)


def private_file(path: Path) -> None:
    """Make sure ``path`` exists with no group or other permission (created 0600, an existing one of ours
    tightened); its content is left as it is."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    _tighten(path)


def write_private(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text``, the file 0600."""
    private_file(path)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _tighten(path: Path) -> None:
    info = path.stat()
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        path.chmod(stat.S_IMODE(info.st_mode) & 0o700)
