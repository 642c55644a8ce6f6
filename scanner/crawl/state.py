"""The crawl's on-disk state: one SQLite file holding the frontier and the images seen, locked to one process.

Why SQLite (stdlib ``sqlite3``) and not a pickle or a JSON queue: Crawlee's and Scrapy's file queues are known
to corrupt on an unclean shutdown, while a SQLite transaction either happened or did not, so ``--resume`` after
a kill starts from a consistent frontier. This is client-local state of one crawl, not the service database.

Why a lock: two crawls writing one frontier would each take the other's pages; like Screaming Frog's crawl
database, a state file admits one process at a time (``fcntl.flock`` on a sidecar ``.lock`` file, released by
the kernel if the process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scanner.privatefs import private_dir, private_file

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS urls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL,
    path_key TEXT NOT NULL,
    has_query INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'in_progress', 'done', 'failed')),
    depth INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    discovered_from TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    fetched INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    final_url TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS urls_ready ON urls (state, depth, seq);
CREATE INDEX IF NOT EXISTS urls_path ON urls (path_key);
CREATE TABLE IF NOT EXISTS image_urls (
    url TEXT PRIMARY KEY,
    sha256 TEXT,
    content_type TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL, content_type TEXT);
"""


class StateLockedError(RuntimeError):
    """Another process is using this crawl state file."""


class CrawlState:
    """An open, locked state file; ``conn`` is shared by the frontier and the image store (one thread)."""

    def __init__(self, path: Path | None, *, resume: bool) -> None:
        self._tmpdir = tempfile.mkdtemp(prefix="crawl-state-") if path is None else None
        self.path = Path(self._tmpdir, "state.sqlite3") if self._tmpdir else Path(path)  # type: ignore[arg-type]
        private_dir(self.path.parent)  # the pages and images a crawl met: its owner's only
        self._lock = self._take_lock()
        self.resumed = resume and self.path.exists()
        if not self.resumed:
            self._remove_files()
        private_file(self.path)  # before SQLite opens it: SQLite gives the -wal and -shm files its mode
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self._check_version()

    def _take_lock(self) -> int:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLockedError(f"{self.path} is in use by another crawl") from None
        return fd

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")

    def _check_version(self) -> None:
        found = self.get_meta("schema_version")
        if found is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif found != SCHEMA_VERSION:
            raise ValueError(f"{self.path} holds crawl state of schema {found}, expected {SCHEMA_VERSION}")

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the database and release the lock; a temporary state is deleted. Safe to call twice."""
        conn, self.conn = self.conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.close()
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
