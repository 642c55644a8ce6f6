"""Alembic environment: the scanner's metadata; the URL comes from the caller (``scanner db``), not a file."""

from __future__ import annotations

from alembic import context

from scanner.db.models import Base
from scanner.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:  # noqa: ANN001 - SQLAlchemy connection
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a SQLite table (copy, drop, rename): with foreign keys enforced, dropping the old
        # table would cascade-delete the rows that reference it (audit_run_images of audit_runs, ...). SQLite
        # ignores this pragma inside a transaction, hence before it.
        _pragma(connection, "foreign_keys=OFF")
    # Batch mode lets the same migration alter tables on SQLite (which cannot ALTER most things in place).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True)
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if sqlite:
            _pragma(connection, "foreign_keys=ON")


def _pragma(connection, setting: str) -> None:  # noqa: ANN001 - SQLAlchemy connection
    connection.exec_driver_sql(f"PRAGMA {setting}")
    connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
