"""The frontier: every URL the crawl knows, its state and depth, in the crawl's SQLite file.

States: ``queued`` (waiting, possibly not before ``not_before`` when a retry backs off), ``in_progress`` (claimed
by a page task), ``done`` (delivered to the caller, with or without an error) and ``failed`` (delivered with an
error after the retries). A page is marked done in the same transaction that adds its links, so after a crash
the frontier holds either both or neither. ``resume`` turns ``in_progress`` back into ``queued``: those pages
were never delivered.

Caps that need the frontier live here: the depth limit and the number of query-string variants of one path
(a calendar that links to next month forever, faceted search, sort orders), counted in the database so that a
resumed crawl keeps counting.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from scanner.crawl.state import CrawlState
from scanner.crawl.urls import host_key, path_key


@dataclass(frozen=True)
class Claim:
    """A URL handed to a page task."""

    url: str
    depth: int
    attempts: int  # including this one
    host: str


@dataclass(frozen=True)
class Completion:
    """How a page ended, as the frontier records it."""

    state: str  # "done" or "failed"
    status: int | None = None
    final_url: str | None = None
    error: str | None = None
    fetched: bool = True


class Frontier:
    """Queue operations over the ``urls`` table; every write is one transaction."""

    def __init__(self, state: CrawlState, *, max_depth: int, max_query_variants: int) -> None:
        self._state = state
        self._db = state.conn
        self.max_depth = max_depth
        self.max_query_variants = max_query_variants

    def start(self, start_url: str) -> None:
        """Seed a fresh crawl, or on a resumed one check it is the same crawl and requeue the interrupted pages."""
        recorded = self._state.get_meta("start_url")
        if recorded is not None and recorded != start_url:
            raise ValueError(f"the state file belongs to a crawl of {recorded}, not {start_url}")
        with self._state.transaction() as db:
            db.execute(
                "UPDATE urls SET state = 'queued', attempts = MAX(attempts - 1, 0) WHERE state = 'in_progress'"
            )
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('start_url', ?)", (start_url,))
            self._insert(db, start_url, 0, None)

    def add(self, urls: list[str], depth: int, discovered_from: str | None) -> list[str]:
        """Queue the (normalised, in-scope) URLs not seen before; returns the new ones refused by the caps."""
        with self._state.transaction() as db:
            return self._add_many(db, urls, depth, discovered_from)

    def _add_many(self, db: sqlite3.Connection, urls: list[str], depth: int, discovered_from: str | None) -> list[str]:
        refused = []
        for url in dict.fromkeys(urls):
            if depth > self.max_depth:
                if db.execute("SELECT 1 FROM urls WHERE url = ?", (url,)).fetchone() is None:
                    refused.append(url)
            elif self._insert(db, url, depth, discovered_from) == "refused":
                refused.append(url)
        return refused

    def _insert(self, db: sqlite3.Connection, url: str, depth: int, discovered_from: str | None) -> str:
        if db.execute("SELECT 1 FROM urls WHERE url = ?", (url,)).fetchone():
            return "known"
        key, has_query = path_key(url), "?" in url
        if has_query:
            query = "SELECT COUNT(*) FROM urls WHERE path_key = ? AND has_query = 1"
            (variants,) = db.execute(query, (key,)).fetchone()
            if variants >= self.max_query_variants:
                return "refused"
        db.execute(
            "INSERT INTO urls (url, host, path_key, has_query, state, depth, discovered_from) "
            "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
            (url, host_key(url), key, int(has_query), depth, discovered_from),
        )
        return "added"

    def claim(self, busy_hosts: set[str]) -> Claim | None:
        """The next ready URL (breadth first) whose host is not busy, now marked in_progress."""
        hosts = sorted(busy_hosts)
        marks = ",".join("?" * len(hosts))
        with self._state.transaction() as db:
            row = db.execute(
                "SELECT url, depth, attempts, host FROM urls WHERE state = 'queued' AND not_before <= ? "
                f"AND host NOT IN ({marks}) ORDER BY depth, seq LIMIT 1",
                (time.time(), *hosts),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE urls SET state = 'in_progress', attempts = attempts + 1 WHERE url = ?", (row[0],))
        return Claim(url=row[0], depth=row[1], attempts=row[2] + 1, host=row[3])

    def claim_alias(self, url: str, depth: int, discovered_from: str) -> bool:
        """Take a redirect target for the page that redirected there; False if it is crawled or being crawled."""
        with self._state.transaction() as db:
            row = db.execute("SELECT state FROM urls WHERE url = ?", (url,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO urls (url, host, path_key, has_query, state, depth, discovered_from) "
                    "VALUES (?, ?, ?, ?, 'in_progress', ?, ?)",
                    (url, host_key(url), path_key(url), int("?" in url), depth, discovered_from),
                )
                return True
            if row[0] in ("done", "in_progress"):
                return False
            db.execute("UPDATE urls SET state = 'in_progress' WHERE url = ?", (url,))
            return True

    def release(self, url: str) -> None:
        """Give back a claimed redirect target that was not crawled after all."""
        with self._state.transaction() as db:
            db.execute("UPDATE urls SET state = 'queued' WHERE url = ? AND state = 'in_progress'", (url,))

    def next_ready_in(self, busy_hosts: set[str]) -> float | None:
        """Seconds until a queued URL of a non-busy host may start (0 if one may now); None if none is queued."""
        hosts = sorted(busy_hosts)
        marks = ",".join("?" * len(hosts))
        (soonest,) = self._db.execute(
            f"SELECT MIN(not_before) FROM urls WHERE state = 'queued' AND host NOT IN ({marks})", hosts
        ).fetchone()
        return None if soonest is None else max(0.0, soonest - time.time())

    def retry_later(self, url: str, delay_s: float) -> None:
        """Put a claimed URL back, not to start before ``delay_s`` from now."""
        with self._state.transaction() as db:
            db.execute(
                "UPDATE urls SET state = 'queued', fetched = 1, not_before = ? WHERE url = ?",
                (time.time() + delay_s, url),
            )

    def complete(self, url: str, end: Completion, links: list[str], depth: int, alias: str | None = None) -> list[str]:
        """Record how a page ended and queue its links, in one transaction; returns the new links refused."""
        with self._state.transaction() as db:
            for target in filter(None, (url, alias)):
                db.execute(
                    "UPDATE urls SET state = ?, status = ?, final_url = ?, error = ?, fetched = ? WHERE url = ?",
                    (end.state, end.status, end.final_url, end.error, int(end.fetched and target == url), target),
                )
            return self._add_many(db, links, depth + 1, end.final_url or url)

    def pages_used(self) -> int:
        """Pages fetched and delivered: what counts toward max_pages (robots-skipped URLs do not)."""
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM urls WHERE fetched = 1 AND state IN ('done', 'failed')"
        ).fetchone()
        return int(count)

    def delivered_counts(self) -> tuple[int, int]:
        """(pages fetched and done without error, pages failed) so far: a resumed crawl's starting counts."""
        done, failed = self._db.execute(
            "SELECT COALESCE(SUM(state = 'done' AND fetched = 1 AND error IS NULL), 0), "
            "COALESCE(SUM(state = 'failed'), 0) FROM urls"
        ).fetchone()
        return int(done), int(failed)

    def queued(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM urls WHERE state = 'queued'").fetchone()
        return int(count)

    def delivered(self) -> list[tuple[str, str]]:
        """(url, state) of every delivered URL, in claim order; for reports and tests."""
        rows = self._db.execute("SELECT url, state FROM urls WHERE state IN ('done', 'failed') ORDER BY seq")
        return [(str(u), str(s)) for u, s in rows]
