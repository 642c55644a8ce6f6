"""Issue 14, item 7: the command line's words.  Every option says what it does, defaults are printed once and only
when real, errors name the options people typed, and lists have headers and names."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from scanner.cli import _parser
from tests.support.commands import scanner

pytestmark = pytest.mark.slow  # the scanner command in subprocesses


def _subparsers(parser: argparse.ArgumentParser, path: str = "scanner") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _subparsers(child, f"{path} {name}")
    return found


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{path} {action.dest}"
        for path, parser in _subparsers(_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_defaults_are_printed_once_and_only_when_real(tmp_path: Path) -> None:
    for command in (["crawl"], ["report"], ["demo"], ["audit", "add"]):
        text = " ".join(scanner(tmp_path, *command, "--help", timeout=120).stdout.split())
        assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text
        for option in re.split(r" (?=--[a-z])", text):
            assert option.count("default:") <= 1, option
    crawl = " ".join(scanner(tmp_path, "crawl", "--help", timeout=120).stdout.split())
    assert "--browser BROWSER Chromium executable (default: Playwright's, else Debian's chromium) --api" in crawl
    assert "(default: 0.0)" in crawl  # a real default of zero is still printed


def test_audit_errors_name_the_options_and_the_list_names_the_audits(tmp_path: Path) -> None:
    refused = scanner(tmp_path, "audit", "add", "https://shop.example/", "--every", "1d", "--max-pages", "0")
    assert refused.returncode == 2 and "--max-pages" in refused.stderr and "max_pages" not in refused.stderr
    added = scanner(tmp_path, "audit", "add", "https://shop.example/", "--every", "1d", "--name", "Shop nightly")
    assert added.returncode == 0, added.stderr
    listed = scanner(tmp_path, "audit", "list")
    assert "name" in listed.stdout and "Shop nightly" in listed.stdout
