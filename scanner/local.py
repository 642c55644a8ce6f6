"""The local submitter: a crawl's pages go through the intake (``scanner.intake.take``, the function the API's
``POST /v1/scans`` calls) in this process, are analysed by a thread of this process with its one engine
(``scanner.analysis.inprocess``, the hand-over of the embedded API too), and are read back from the configured
database.  ``scanner crawl`` without ``--api`` and the audit runs use it: no loopback HTTP server, no short-lived
API key, and no second copy of the model in a process that already has one (``scanner.analysis.pipeline.engine_for``
keeps one engine per process).  Its database is opened by the one migration rule (``scanner.db.migrate``).

It answers the same three calls as ``scanner.client.ScannerClient`` (``whoami``, ``submit``, ``scan``), so the
crawler does not know which of the two it feeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from scanner import intake
from scanner.analysis.inprocess import InProcessAnalysis
from scanner.client import Upload
from scanner.db import keys, migrate
from scanner.db.session import make_sessionmaker, transaction
from scanner.settings import Settings
from scanner.versions import served_versions

log = logging.getLogger(__name__)
SCOPES = ["scans:write", "reports:read"]


class LocalSubmitter:
    """``async with LocalSubmitter(settings, tenant) as submitter``: scans of ``tenant`` in the configured
    database, analysed in this process (whatever broker the settings name)."""

    def __init__(self, settings: Settings, tenant: str = "default") -> None:
        self.settings, self.tenant = settings, tenant
        self._db: Engine | None = None
        self._analysis: InProcessAnalysis | None = None
        self.tenant_id = 0

    async def __aenter__(self) -> LocalSubmitter:
        self._db = await asyncio.to_thread(migrate.open_current, self.settings)  # the one migration rule
        self.sessions = make_sessionmaker(self._db)
        self.versions = served_versions(self.settings)
        self.tenant_id = await asyncio.to_thread(self._tenant_id)
        self._analysis = InProcessAnalysis(self.settings, self.sessions)
        await self._analysis.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._analysis is not None:
            await self._analysis.stop()
        if self._db is not None:
            self._db.dispose()

    def _tenant_id(self) -> int:
        with transaction(self.sessions) as session:
            return keys.get_or_create_tenant(session, self.tenant).id

    async def whoami(self) -> dict[str, Any]:
        return {"id": "local", "tenant": self.tenant, "scopes": SCOPES}

    async def submit(self, page_url: str | None, uploads: Sequence[Upload], source: str = "crawl") -> dict[str, Any]:
        """One scan of these image files, as seen on ``page_url`` (the bytes the browser received)."""
        assert self._analysis is not None, "use the submitter inside 'async with'"
        entries = [intake.Entry(image_url=u.url, filename=u.filename, data=u.data) for u in uploads]
        submission = intake.Submission(source, page_url, entries)
        scan_id, _ = await intake.take(
            self.settings, self.sessions, self.versions, self._analysis, self.tenant_id, submission
        )
        return await self.scan(scan_id)

    async def scan(self, scan_id: str) -> dict[str, Any]:
        document = await asyncio.to_thread(intake.scan_document, self.sessions, self.tenant_id, scan_id)
        if document is None:
            raise LookupError(f"no scan {scan_id}")
        return document
