"""Images seen during a crawl: URL -> sha256 (or why there is no image), and each distinct content once.

Why on disk: an image shown on every page (a logo, a banner) must be fetched once per crawl, but its bytes are
reported with every page it appears on; keeping every distinct image in memory for a whole crawl does not
scale, so the bytes live in the crawl's SQLite file, keyed by sha256 (the same bytes under two URLs are stored
once, under the first URL's content type). It also makes a resumed crawl reuse what it already has.
"""

from __future__ import annotations

from dataclasses import dataclass

from scanner.crawl.state import CrawlState


@dataclass(frozen=True)
class KnownImage:
    """What the crawl knows about one image URL: its content's hash, or the error that kept it out."""

    sha256: str | None
    content_type: str | None
    error: str | None


class ImageStore:
    """The ``image_urls`` and ``blobs`` tables."""

    def __init__(self, state: CrawlState) -> None:
        self._state = state

    def lookup(self, url: str) -> KnownImage | None:
        row = self._state.conn.execute(
            "SELECT sha256, content_type, error FROM image_urls WHERE url = ?", (url,)
        ).fetchone()
        return None if row is None else KnownImage(*row)

    def remember(self, url: str, digest: str, data: bytes, content_type: str | None) -> tuple[KnownImage, bool]:
        """Store the bytes seen at ``url``, whose SHA-256 the caller computed (once: a data: URL needs it for its
        label first); returns what is now known and whether the content is new to the crawl."""
        with self._state.transaction() as db:
            new = db.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (digest,)).fetchone() is None
            if new:
                db.execute(
                    "INSERT INTO blobs (sha256, data, content_type) VALUES (?, ?, ?)", (digest, data, content_type)
                )
            db.execute(
                "INSERT OR REPLACE INTO image_urls (url, sha256, content_type, error) VALUES (?, ?, ?, NULL)",
                (url, digest, content_type),
            )
        return KnownImage(digest, content_type, None), new

    def remember_failure(self, url: str, error: str) -> KnownImage:
        with self._state.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO image_urls (url, sha256, content_type, error) VALUES (?, NULL, NULL, ?)",
                (url, error),
            )
        return KnownImage(None, None, error)

    def data(self, sha256: str) -> bytes:
        row = self._state.conn.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            raise KeyError(sha256)
        return bytes(row[0])

    def totals(self) -> tuple[int, int]:
        """(distinct images, their bytes) kept so far, resumed runs included."""
        count, size = self._state.conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM blobs").fetchone()
        return int(count), int(size)
