"""Issue 14, item 8: the README is ordered around what people do, starts with the two set-up commands, and every
`scanner` command it shows is one the command line accepts (options, choices and arguments as printed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from scanner.cli import _parser

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(text: str) -> list[str]:
    """The `.venv/bin/scanner ...` lines of the indented code blocks, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        if line.startswith("    .venv/bin/scanner "):
            found.append(line.strip().split("  #")[0].strip())
    return found


def test_the_two_commands_come_first_and_the_sections_follow_what_people_do() -> None:
    text = README.read_text()
    headings = re.findall(r"(?m)^## (.+)$", text)
    assert headings[0] == "The two commands"
    first = text.split("## ")[1]
    assert "    bash scripts/bootstrap.sh && .venv/bin/scanner demo\n" in first
    assert "    bash scripts/test.sh\n" in first
    order = ["Crawling a site", "Reports and the dashboard", "Browser extension", "Scheduled audits",
             "The service: API, database, workers", "Training"]  # fmt: skip
    assert [heading for heading in headings if heading in order] == order
    assert "come next" not in text


@pytest.mark.parametrize("command", _commands(README.read_text()))
def test_every_scanner_command_in_the_readme_is_accepted(command: str) -> None:
    args = shlex.split(command)[1:]
    try:
        _parser().parse_args(args)
    except SystemExit as exit_:
        pytest.fail(f"the README shows a command the CLI refuses ({exit_.code}): {command}")


def test_the_readme_shows_the_commands_people_need() -> None:
    commands = " ".join(_commands(README.read_text()))
    for needed in ("scanner crawl", "scanner report", "scanner serve", "scanner audit add", "scanner keys create"):
        assert needed in commands, needed
