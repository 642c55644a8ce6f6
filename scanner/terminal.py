"""The CLI's rich consoles: as wide as the terminal, or, when the output is piped or redirected, unlimited, so
that a URL or a row is never cut into 80-column pieces that ``grep`` and scripts cannot read."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 100_000  # rich sizes a table to its content: this only lifts the limit


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width, or no wrapping when it is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True)
