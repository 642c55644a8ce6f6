"""Alembic driven from code: ``scanner db upgrade|downgrade|current`` and the tests use these, and every entry
point opens its database through ``open_current``, which holds the one migration rule:

- the embedded default database, the SQLite file ``data_dir/scanner.db`` of a process without a broker or a
  ``database_url``, is upgraded automatically: it belongs to this installation and no other process migrates it;
- any other database (a ``database_url``, PostgreSQL or not, or any database of the distributed mode) is never
  migrated implicitly: a process refuses to start, with one line naming ``scanner db upgrade``, when its schema
  is behind this code, so a server never changes a schema other processes are using;
- a schema ahead of this code (migrated by a newer scanner) is refused everywhere, the default file included.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from scanner import settings as config  # the module only: scanner.db may import scanner.settings (test_layers)
from scanner.db.session import make_engine

# Found, not imported: the migrations import the models, so an import here would close a cycle.
MIGRATIONS_DIR = Path(importlib.util.find_spec("migrations").origin).resolve().parent
DEFAULT_DATABASE = "scanner.db"  # in data_dir: Settings' default database_url


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


def known_revisions() -> frozenset[str]:
    return frozenset(
        script.revision for script in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()
    )


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


class SchemaOutOfDate(ValueError):
    """The database's schema is not this code's, and this process may not (or cannot) migrate it.  A
    ValueError: a step the person must take, which the commands print as one line."""


def migrates_itself(settings: config.Settings) -> bool:
    """The rule: only the embedded default SQLite file is upgraded without ``scanner db upgrade``."""
    return settings.embedded and settings.db_url == f"sqlite:///{settings.data_dir / DEFAULT_DATABASE}"


def open_current(settings: config.Settings) -> Engine:
    """An engine on the settings' database at this code's schema, by the rule of this module's docstring;
    ``SchemaOutOfDate`` otherwise.  Every entry point (serve, crawl, audit, keys, report, worker) calls it."""
    return current_engine(settings.db_url, upgrade_if_behind=migrates_itself(settings))


def current_engine(url: str, upgrade_if_behind: bool) -> Engine:
    """An engine on a database at the newest schema, upgrading it only when ``upgrade_if_behind``.  Entry
    points call ``open_current``, which decides that by the one rule."""
    engine = make_engine(url)
    try:
        state = schema_state(engine)
        if state == "behind" and upgrade_if_behind:
            upgrade(url)
        elif state != "current":
            raise SchemaOutOfDate(refusal(state, current_revision(engine), url))
    except BaseException:
        engine.dispose()
        raise
    return engine


def schema_state(engine: Engine) -> str:
    """``current``, ``behind`` (empty, or an older revision) or ``ahead`` (a revision this code does not know:
    a newer scanner migrated it)."""
    current = current_revision(engine)
    if current == head_revision():
        return "current"
    return "ahead" if current is not None and current not in known_revisions() else "behind"


def refusal(state: str, current: str | None, url: str) -> str:
    """The one line a process that may not migrate says about a schema that is not its own."""
    head, where = head_revision(), f"the database {config.masked_url(url)}"
    if state == "ahead":
        return (
            f"{where} has the schema revision {current}, newer than this scanner's newest ({head}): run the newer"
            f" scanner that migrated it, or its `scanner db downgrade {head}`"
        )
    has = f"is at schema revision {current}" if current is not None else "has no schema yet"
    return f"{where} {has}, behind this scanner's {head}: run `scanner db upgrade`"
