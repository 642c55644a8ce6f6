"""The live progress line of a crawl and scan (``scanner.crawl.scan``), drawn with rich: one line of counts that
``scanner crawl``, ``scanner demo`` and ``scanner audit run`` show while the crawl goes on, left on screen at
the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from scanner.crawl.scan import ProgressDisplay, ShowProgress


def crawl_progress(console: Console) -> ProgressDisplay:
    """The progress display of a crawl on ``console``."""
    return lambda: _line(console)


@contextmanager
def _line(console: Console) -> Iterator[ShowProgress]:
    with Progress(
        TextColumn("[bold]{task.fields[pages]}[/] pages"),
        BarColumn(bar_width=20),
        TextColumn(
            "{task.fields[images]} images  {task.fields[queued]} queued  {task.fields[analysed]} analysed  "
            "[red]{task.fields[flagged]} flagged[/]  {task.fields[errors]} errors"
        ),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task: TaskID | None = None

        def show(counts: dict[str, int]) -> None:
            nonlocal task
            if task is None:
                task = progress.add_task("crawl", total=None, **counts)
            else:
                progress.update(task, **counts)

        yield show
