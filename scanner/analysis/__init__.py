"""How queued images reach the engine: the Celery app and its tasks (``scanner worker``), and the batch pipeline
that reads images from the database, runs ``worker.engine`` on them and records verdicts."""
