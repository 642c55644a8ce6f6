"""The Celery application, configured from ``Settings``.  Importing this module loads no model code: the API
uses it to enqueue tasks by name, and ``scanner.analysis.tasks`` registers the tasks themselves.

Choices, each for a failure people hit (see ../shared/docs/field-notes.md):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its verdicts are
  committed, and a worker killed mid-batch gives its message back; the task is idempotent (verdicts are unique
  per image and versions), and ``scanner.analysis.pipeline`` counts deliveries itself and dead-letters a poison input,
  so a requeue can never loop forever.
- prefetch multiplier 1: a batch is long; a worker must not hoard messages another worker could run.
- Redis ``visibility_timeout`` (redelivery of unacknowledged messages) is set from settings and must exceed
  the longest task and any retry countdown, or tasks run twice.
"""

from __future__ import annotations

from celery import Celery

from scanner.settings import Settings

ANALYSE_TASK = "worker.analyse"
QUEUE = "analyse"


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise ValueError("no broker configured (SCANNER_BROKER_URL): the embedded mode analyses in-process")
    app = Celery("scanner", broker=settings.broker_url, backend=settings.result_backend)
    transport = {
        "visibility_timeout": settings.broker_visibility_timeout_s,
        # A broker that accepts connections but never answers must not hold a publisher (or a probe) forever.
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
    }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_routes={ANALYSE_TASK: {"queue": QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        task_ignore_result=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep reconnecting through a broker restart
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        # A pool child loads the model in worker_process_init before it reports up; Celery's default of 4 s
        # kills and respawns it forever on a busy machine (seen when replacing a child killed mid-batch).
        worker_proc_alive_timeout=120,
    )
    return app
