"""Fixtures of the audit tests: a local site whose images the test changes between runs, an audit on it, and a
webhook receiver whose answers the test scripts (tests/support/audit_sites.py).  Real servers on 127.0.0.1, no mocks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner.audits import store
from scanner.db import keys, migrate
from scanner.db.models import utcnow
from scanner.db.session import make_engine, make_sessionmaker, transaction
from scanner.settings import Settings
from tests.support.audit_sites import Receiver, Site
from tests.support.images import crawlable_png
from tests.support.servers import Served


@pytest.fixture
def site() -> Iterator[Site]:
    shop = Site({"a.png": crawlable_png(1), "b.png": crawlable_png(2), "c.png": crawlable_png(3)})
    server = Served(shop.app())
    shop.url = server.url + "/"
    yield shop
    server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    config = Settings(data_dir=tmp_path / "data", engine_threads=1, fetch_allow_private=True, fetch_any_port=True)
    migrate.upgrade(config.db_url)
    return config


@pytest.fixture
def sessions(settings: Settings) -> Iterator[Any]:
    engine = make_engine(settings.db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def make_audit(sessions: Any) -> Callable[..., int]:
    def make(start_url: str, tenant: str = "default", **options: Any) -> int:
        with transaction(sessions) as session:
            tenant_id = keys.get_or_create_tenant(session, tenant).id
            spec = store.AuditSpec(start_url=start_url, schedule=options.pop("schedule", "every 6h"), **options)
            return store.create_audit(session, tenant_id, spec, utcnow()).id

    return make


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    server = Served(hook.app())
    hook.url = server.url + "/hook"
    yield hook
    server.stop()
