"""Shared fixtures: one CPU thread (the test machine is small) and tiny synthetic image data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.logscan import leaked_keys
from tests.training.helpers import write_imagefolder, write_tarball


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
