"""The import graph points one way (docs/architecture.md).

Every module of ``scanner``, ``worker``, ``training`` and ``migrations`` sits in one layer of ``LAYERS``, by its
longest matching prefix; a module that matches none fails the test, so a new module is placed on purpose.  Every
import, also those inside functions (a lazy import must not hide a cycle), goes to the same layer or one below,
and the modules of one layer import each other without a cycle.  The rules that follow are the design's own:
the serving path never imports the offline tools, the crawls and audits submit through the intake, and the
API process loads no model code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("scanner", "worker", "training", "migrations")

# Top to bottom.  Each line: the prefixes of one layer, and what it is.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("scanner.cli", "scanner.audits.cli"),  # the command line
    ("scanner.demo_site",),  # the demo's site: attacked images made with the research tools
    ("scanner.api", "scanner.analysis.tasks", "scanner.audits.tasks", "scanner.audits.local_beat"),  # processes
    ("scanner.audits", "scanner.report"),  # scheduled audits and reports
    ("scanner.crawl.scan", "scanner.crawl.progress", "scanner.local"),  # the crawl-and-scan loop, its progress, the
    # local submitter it feeds
    ("scanner.analysis", "scanner.crawl", "scanner.client"),  # the hand-over to the engine, the crawler, the client
    ("scanner.intake",),  # the one way in for images
    ("migrations",),  # Alembic's environment and versions, driven by scanner.db.migrate (found, not imported)
    ("scanner.fetch", "scanner.db", "scanner.logsafe"),  # the outside world, the database (and the log filter
    # that knows its keys' form)
    ("scanner",),  # settings, versions, explanations, small helpers
    ("worker.research",),  # offline tools that make and measure detectors
    ("worker",),  # the engine: serving only
    ("training",),  # data, architectures, attacks, losses, training, bundles
)
SERVING = ("scanner.api", "scanner.analysis", "scanner.intake", "scanner.local", "worker.engine")
OFFLINE = ("worker.research", "training.trainer", "training.cli", "training.evaluate", "training.methods")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found[".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


@cache
def _graph() -> dict[str, frozenset[str]]:
    """Module -> the project's modules it imports (a name that is an attribute resolves to its module)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[module] = frozenset(t for t in map(resolve, targets) if t is not None and t != module)
    return graph


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, (prefix,)) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for target in _graph().get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_module_has_a_layer() -> None:
    assert [m for m in _graph() if _layer(m) is None] == []


def _upward(graph: dict[str, frozenset[str]]) -> list[str]:
    return sorted(
        f"{m} ({LAYERS[_layer(m)][0]}) -> {t} ({LAYERS[_layer(t)][0]})"
        for m, targets in graph.items()
        for t in targets
        if _layer(t) < _layer(m)
    )


def test_no_import_points_up() -> None:
    assert _upward(_graph()) == []


def test_no_cycle_within_a_layer() -> None:
    cycles = [m for m in _graph() if any(m in _reachable(t) for t in _graph()[m])]
    assert cycles == []


def test_the_serving_path_never_imports_the_offline_tools() -> None:
    serving = {m for m in _graph() if _within(m, SERVING)}
    reached = set().union(*(_reachable(m) for m in serving))
    assert sorted(m for m in reached if _within(m, OFFLINE)) == []


def test_crawls_and_audits_submit_through_the_intake_not_over_http() -> None:
    graph = _graph()
    assert "scanner.local" in graph["scanner.audits.runner"] and "scanner.intake" in graph["scanner.local"]
    assert "scanner.intake" in graph["scanner.api.routes"]
    assert not any(_within(t, ("scanner.client",)) for t in graph["scanner.audits.runner"])


def test_the_crawl_and_scan_loop_prints_nothing_and_the_audits_use_it_not_the_cli() -> None:
    loop = _graph()["scanner.crawl.scan"]
    assert not any(_within(t, ("scanner.cli",)) for t in _reachable("scanner.crawl.scan"))
    assert "scanner.crawl.scan" in _graph()["scanner.audits.runner"]
    source = (REPO / "scanner/crawl/scan.py").read_text()
    assert "import rich" not in source and "import argparse" not in source and loop


def test_the_embedded_audit_schedule_needs_no_celery() -> None:
    reached = _reachable("scanner.audits.local_beat")
    assert "scanner.audits.runner" in reached  # the walk does follow the scheduler's imports
    assert not any(_within(name, ("scanner.audits.tasks", "scanner.analysis.tasks")) for name in reached)
    sources = "\n".join(_modules()[m].read_text() for m in reached)
    assert "import celery" not in sources and "from celery" not in sources


def test_the_api_process_loads_no_model_code() -> None:
    probe = "import sys, scanner.api, scanner.intake; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_a_new_back_edge_fails() -> None:
    """The check itself: an import from the database layer up into the API is reported."""
    graph = dict(_graph())
    graph["scanner.db.queries"] = graph["scanner.db.queries"] | {"scanner.api.routes"}
    assert _upward(graph) == ["scanner.db.queries (scanner.fetch) -> scanner.api.routes (scanner.api)"]
