"""The command line's help formatter, shared by ``scanner.cli`` and ``scanner.audits.cli``."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Prints a default once, and only a real one: not None, [] or False, nor one the help already states."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == []:
            return text
        return super()._get_help_string(action) or text
