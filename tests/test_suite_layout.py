"""The suite's own layout: a test module imports shared helpers from tests/support/, never from another test module
(a ``test_*.py`` file or a conftest), so that moving or deleting one test file cannot break another."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)


def _imported(tree: ast.Module, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything imported, relative imports resolved against ``package``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield node.lineno, base
            for alias in node.names:  # ``from tests.service import conftest`` names the module itself
                yield node.lineno, f"{base}.{alias.name}"


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and (parts[-1].startswith("test_") or parts[-1] == "conftest")


def imports_of_test_modules(source: str, module: str) -> list[str]:
    """``line: name`` for each import, in the source of ``module``, of a test module of this suite."""
    package = module.rsplit(".", 1)[0]
    return [f"{line}: {name}" for line, name in _imported(ast.parse(source), package) if _is_test_module(name)]


def test_no_test_module_imports_another_test_module() -> None:
    found = {}
    for path in sorted(TESTS.rglob("*.py")):
        hits = imports_of_test_modules(path.read_text(), _module_name(path))
        if hits:
            found[str(path.relative_to(TESTS.parent))] = hits
    assert found == {}, f"import these from tests/support/ instead: {found}"


def test_the_check_sees_each_way_of_importing_a_test_module() -> None:
    # (the first line is split so that a grep of the suite for such imports finds none here)
    source = (
        "from tests.service."
        + """test_api import png
from tests.dashboard.conftest import DashboardApi
from tests.service import conftest as service
import tests.crawl.test_units
from .conftest import make_bundle
from .test_engine import image_bytes
from tests.support.images import random_png
from scanner.api import create_app
"""
    )
    assert imports_of_test_modules(source, "tests.worker.test_x") == [
        "1: tests.service.test_api",
        "2: tests.dashboard.conftest",
        "3: tests.service.conftest",
        "4: tests.crawl.test_units",
        "5: tests.worker.conftest",
        "6: tests.worker.test_engine",
    ]
