"""The import graph points one way (issue 14's design): ``scanner.api`` and the command line on top; the intake,
the local submitter, the crawler, the audits and the reports below them; the database below those; the engine
(``worker``) below that; ``training`` at the bottom.  Every import counts, also those inside functions, so that a
lazy import cannot hide a cycle.  And no crawl or audit run talks HTTP to its own process: they submit through
``scanner.intake``, the function the API's handler calls."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP = ("scanner.api", "scanner.cli")
BELOW_THE_TOP = (
    "scanner.intake", "scanner.local", "scanner.crawl", "scanner.audits", "scanner.report",
    "scanner.client", "scanner.db", "scanner.fetch", "scanner.settings", "scanner.versions", "scanner.explain",
)  # fmt: skip


def _imports(package: str) -> Iterator[tuple[str, str]]:
    for path in (REPO / package).rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((module, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield module, node.module
                # `from scanner import intake`: the name may be a module
                yield from ((module, f"{node.module}.{alias.name}") for alias in node.names)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_nothing_below_the_api_and_the_cli_imports_them() -> None:
    upward = {
        (module, top)
        for module, target in _imports("scanner")
        for top in TOP
        if _within(module, BELOW_THE_TOP) and _within(target, (top,))
    }
    assert upward == set()


def test_the_database_layer_is_a_leaf_and_the_engine_and_training_know_no_scanner() -> None:
    db = {(m, t) for m, t in _imports("scanner") if _within(m, ("scanner.db",)) and t.startswith("scanner.")}
    assert {t for _, t in db} <= {"scanner.db", "scanner.settings"} | {t for _, t in db if t.startswith("scanner.db.")}
    engine = {(m, t) for m, t in _imports("worker") if _within(m, ("worker.engine",)) and _within(t, ("scanner",))}
    assert engine == set()
    training = {(m, t) for m, t in _imports("training") if _within(t, ("scanner", "worker"))}
    assert training == set()


def test_crawls_and_audits_submit_through_the_intake_not_over_http() -> None:
    used = {(m, t) for m, t in _imports("scanner")}
    assert ("scanner.audits.runner", "scanner.local") in used and ("scanner.local", "scanner.intake") in used
    assert ("scanner.api.routes", "scanner.intake") in used
    assert not any(_within(t, ("scanner.client",)) for m, t in used if m == "scanner.audits.runner")


def _reachable(start: str) -> set[str]:
    """Every module name imported from ``start`` onwards, through the project's own modules (lazy imports too)."""
    graph: dict[str, set[str]] = {}
    for module, target in _imports("scanner"):
        graph.setdefault(module, set()).add(target)
    seen, todo = {start}, [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_crawl_and_scan_loop_prints_nothing_and_the_audits_use_it_not_the_cli() -> None:
    used = {(m, t) for m, t in _imports("scanner")}
    loop = {t for m, t in used if m == "scanner.crawl.scan"}
    assert not any(_within(t, ("rich", "argparse", "scanner.cli")) for t in loop)
    assert ("scanner.audits.runner", "scanner.crawl.scan") in used


def test_the_embedded_audit_schedule_needs_no_celery() -> None:
    reached = _reachable("scanner.audits.local_beat")
    assert "scanner.audits.runner" in reached  # the walk does follow the scheduler's imports
    assert not any(_within(name, ("celery", "scanner.audits.tasks", "scanner.analysis.tasks")) for name in reached)
