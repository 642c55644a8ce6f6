"""The Celery worker: ``scanner worker`` builds it with ``create_worker_app(settings)`` and runs it.

The app holds the analysis task; ``scanner worker`` adds the audit tasks to it
(``scanner.audits.cli.worker_arguments``): the audits run crawls analysed through this package, so this package
imports nothing of them.

The engine is loaded once per worker *process*, in ``worker_process_init`` (a forked child cannot reuse a
parent's CUDA context, nor its database connections).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_ready

from scanner.analysis import heartbeat
from scanner.analysis.celery_app import ANALYSE_TASK, make_celery
from scanner.analysis.pipeline import analyse_images, engine_for
from scanner.db.session import make_engine, make_sessionmaker
from scanner.settings import Settings

log = logging.getLogger(__name__)


class WorkerState:
    """The per-process engine and database sessions, created on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Any = None
        self._sessions: Any = None

    def reset(self) -> None:
        self._engine = self._sessions = None

    @property
    def engine(self) -> Any:  # worker.engine.Engine, imported here only: the API never loads torch
        if self._engine is None:
            self._engine = engine_for(self.settings)
            log.info("engine ready: model %s", self._engine.model_version)
        return self._engine

    @property
    def sessions(self) -> Any:
        if self._sessions is None:
            self._sessions = make_sessionmaker(make_engine(self.settings.db_url))
        return self._sessions


def create_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    state = WorkerState(settings)

    @worker_process_init.connect(weak=False)
    def load_in_child(**_: Any) -> None:
        state.reset()  # nothing inherited from the parent process
        state.engine, state.sessions  # noqa: B018 - load now, not on the first task
        heartbeat.start(settings.broker_url or "")  # this child can take work now: /healthz counts it

    @worker_ready.connect(weak=False)
    def beat_without_children(sender: Any = None, **_: Any) -> None:
        from celery.concurrency.prefork import TaskPool

        if not isinstance(getattr(sender, "pool", None), TaskPool):  # solo/threads: this process runs the tasks
            state.engine  # noqa: B018 - as a prefork child does: ready means the model is loaded
            heartbeat.start(settings.broker_url or "")

    @app.task(
        name=ANALYSE_TASK,
        bind=True,
        # Any failure is retried with back-off: transient faults (a database restarting, a flaky device) then
        # pass, and the pipeline's own delivery count dead-letters an image that fails every time.
        autoretry_for=(Exception,),
        retry_backoff=2,
        retry_backoff_max=60,
        retry_jitter=True,
        max_retries=settings.task_retries,
    )
    def analyse(
        self: Task, image_ids: list[int], model_version: str | None = None, calibration_version: str | None = None
    ) -> dict[str, Any]:
        """Analyse a batch of stored images and record their verdicts."""
        engine = state.engine
        if model_version and model_version != engine.model_version:
            # The API and this worker serve different bundles: leave the images for a matching worker rather
            # than write verdicts nobody asked for.
            raise self.retry(
                countdown=30, exc=RuntimeError(f"task for {model_version}, worker serves {engine.model_version}")
            )
        outcome = analyse_images(state.sessions, engine, image_ids, settings.max_deliveries, self.request.id)
        log.info("batch of %d images: %s", len(image_ids), outcome)
        return outcome.__dict__

    return app
