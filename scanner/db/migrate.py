"""Alembic driven from code: ``scanner db upgrade|downgrade|current`` and the tests use these."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from scanner.db.session import make_engine

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision(url: str = "sqlite://") -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


class SchemaOutOfDate(RuntimeError):
    """The database is behind the code, and this process may not migrate it."""


def current_engine(url: str, upgrade_if_behind: bool) -> Engine:
    """An engine on a database at the newest schema.  Only the embedded mode migrates on its own
    (``upgrade_if_behind``); a shared database is migrated deliberately, with ``scanner db upgrade``."""
    engine = make_engine(url)
    if not is_up_to_date(engine):
        if not upgrade_if_behind:
            engine.dispose()
            raise SchemaOutOfDate("the database schema is not current: run `scanner db upgrade`")
        upgrade(url)
    return engine
