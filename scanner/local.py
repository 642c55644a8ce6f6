"""The local submitter: a crawl's pages go through the intake (``scanner.intake.take``, the function the API's
``POST /v1/scans`` calls) in this process, are analysed by a thread of this process with its one engine, and are
read back from the configured database.  ``scanner crawl`` without ``--api`` and the audit runs use it: no
loopback HTTP server, no short-lived API key, and no second copy of the model in a process that already has one
(``scanner.analysis.pipeline.engine_for`` keeps one engine per process).

It answers the same three calls as ``scanner.client.ScannerClient`` (``whoami``, ``submit``, ``scan``), so the
crawler does not know which of the two it feeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from scanner import intake
from scanner.client import Upload
from scanner.db import keys, migrate, queries
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from scanner.versions import served_versions

log = logging.getLogger(__name__)
SCOPES = ["scans:write", "reports:read"]


class LocalAnalysis:
    """Hands recorded images to one analysis thread of this process (``intake.Handover``).  A failed batch is
    tried again until ``scanner.analysis.pipeline`` dead-letters its images, so a scan never stays pending for ever."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings, self.sessions = settings, sessions
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="analysis")
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, image_ids: Sequence[int], model_version: str, calibration_version: str) -> None:
        if not image_ids:
            return
        await asyncio.to_thread(self._mark_enqueued, list(image_ids))
        task = asyncio.create_task(self._analyse(list(image_ids)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _mark_enqueued(self, image_ids: list[int]) -> None:
        # Handed over: a `scanner serve` on the same database must not take them for lost work.
        with transaction(self.sessions) as session:
            queries.mark_enqueued(session, image_ids)

    async def _analyse(self, image_ids: list[int]) -> None:
        from scanner.analysis.pipeline import analyse_images, engine_for

        loop = asyncio.get_running_loop()
        for attempt in range(self.settings.max_deliveries + 1):
            try:
                engine = await loop.run_in_executor(self._thread, engine_for, self.settings)
                args = (self.sessions, engine, image_ids, self.settings.max_deliveries)
                await loop.run_in_executor(self._thread, analyse_images, *args)
                return
            except Exception:  # noqa: BLE001 - counted per image by the pipeline; the last attempt dead-letters
                log.exception("local analysis of %d images failed (attempt %d)", len(image_ids), attempt + 1)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._thread.shutdown(wait=True, cancel_futures=True)


class LocalSubmitter:
    """``async with LocalSubmitter(settings, tenant) as submitter``: scans of ``tenant`` in the configured
    database, analysed in this process (whatever broker the settings name)."""

    def __init__(self, settings: Settings, tenant: str = "default") -> None:
        self.settings, self.tenant = settings, tenant
        self._db: Engine | None = None
        self._analysis: LocalAnalysis | None = None
        self.tenant_id = 0

    async def __aenter__(self) -> LocalSubmitter:
        await asyncio.to_thread(migrate.upgrade, self.settings.db_url)
        self._db = make_engine(self.settings.db_url)
        self.sessions = make_sessionmaker(self._db)
        self.versions = served_versions(self.settings)
        self.tenant_id = await asyncio.to_thread(self._tenant_id)
        self._analysis = LocalAnalysis(self.settings, self.sessions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._analysis is not None:
            await self._analysis.close()
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
