"""What the research commands show while they run: progress bars and the console their tables go to."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def report_console() -> Console:
    """The console on stderr, wide enough for the reports' tables when it is a log or a pipe."""
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=160)


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
