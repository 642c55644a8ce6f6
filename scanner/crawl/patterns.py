"""The include/exclude regexes of a crawl, matched in linear time (RE2).

The patterns come from users, and for audits from any tenant, and are searched in every URL the crawl finds.
With a backtracking engine (Python's ``re``) a pattern such as ``(a+)+$`` takes exponential time on a URL of
a's, stalling the event loop of the API or a worker. RE2 has no backtracking: matching time is linear in the
URL whatever the pattern, at the price of lookarounds and back-references, which are refused as invalid.
"""

from __future__ import annotations

from typing import Any

import re2

MAX_PATTERN_LENGTH = 1000
MAX_PROGRAM_BYTES = 1 << 20  # RE2's memory budget for one compiled pattern


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # an invalid pattern is reported to the caller, not logged by RE2 on stderr
    options.max_mem = MAX_PROGRAM_BYTES
    return options


def compile_pattern(pattern: str) -> Any:
    """The compiled pattern; ValueError (saying why) when it is too long or not valid RE2 syntax."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(pattern, _options())
    except re2.error as err:
        reason = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        hint = "RE2 syntax: no lookaround or back-references"
        raise ValueError(f"invalid pattern {pattern!r}: {reason} ({hint})") from None


def pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used, or None."""
    try:
        compile_pattern(pattern)
    except ValueError as err:
        return str(err)
    return None
