"""Shared fixtures: one CPU thread (the test machine is small), tiny synthetic image data sets, and the servers
that several test packages use (a Redis server of our own, databases on the machine's PostgreSQL)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text

from tests.support.datasets import write_imagefolder, write_tarball
from tests.support.logscan import leaked_keys
from tests.support.servers import free_port
from tests.support.services import POSTGRES_ADMIN_URL, RedisServer, postgres_reachable

# The tiers (markers in pyproject.toml), from the fixtures a test uses, so that a new test is marked as it is written:
# Chromium comes with a fixture named ``browser`` (the crawler's, the dashboard's, the extension's), the servers with
# these. Tests that start them otherwise (a ``scanner`` subprocess, an audit run) carry the marks themselves.
BROWSER_FIXTURES = frozenset({"browser"})
SERVICE_FIXTURES = frozenset({"redis_server", "broker_url", "postgres_databases", "postgres_url", "start_worker"})
SLOW_FIXTURES = frozenset({"start_worker"})


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
        if used & SERVICE_FIXTURES:
            item.add_marker(pytest.mark.services)
        # Starting Chromium or a Celery worker takes seconds before the test proper begins.
        if item.get_closest_marker("browser") or used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _no_api_key_in_logs(caplog: pytest.LogCaptureFixture):
    """Every log line of every test's servers (they run in this process) is searched for a full API key."""
    yield
    leaks = [text for when in ("setup", "call") for text in leaked_keys(caplog.get_records(when))]
    assert not leaks, f"an API key reached the log: {leaks[0][:300]}"


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory) -> Path:
    """ImageFolder tree: train/ 32 + 32 and test/ 8 + 8 PNG images of 8x8 pixels, classes 'bright' and 'dark'."""
    root = tmp_path_factory.mktemp("tree") / "tiny"
    write_imagefolder(root, n_train=32, n_test=8, size=8, suffix=".png")
    return root


@pytest.fixture(scope="session")
def tiny_tarball(tiny_tree: Path, tmp_path_factory) -> Path:
    """The tiny tree packed as a .tar.gz, as the shared CIFAR-10 tarball is."""
    return write_tarball(tiny_tree, tmp_path_factory.mktemp("tar") / "tiny.tar.gz")


@pytest.fixture(scope="session")
def web_set(tmp_path_factory) -> Path:
    """A small web-image set built from the Debian packages (one source per kind and split, two crops each);
    the packages are installed when missing, as `python -m worker.research.web_images build` does."""
    from worker.research import web_images

    return web_images.build(tmp_path_factory.mktemp("web") / "set", limit=1, progress=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Callable[[], str]]:
    """Makes fresh databases on the machine's PostgreSQL (scripts/test.sh starts the server when it is down);
    drops them all at the end of the session."""
    if not postgres_reachable():
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} (set SCANNER_TEST_POSTGRES)")
    admin = create_engine(
        POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    names: list[str] = []

    def create() -> str:
        name = f"scanner_test_{os.getpid()}_{secrets.token_hex(3)}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        names.append(name)
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url(postgres_databases: Callable[[], str]) -> str:
    return postgres_databases()
