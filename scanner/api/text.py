"""Text that crosses the edge must be storable: valid Unicode without NUL characters.

PostgreSQL refuses NUL in text columns and neither SQLite nor PostgreSQL can store lone surrogates (what a
non-UTF-8 filename or a JSON ``"\\ud800"`` escape decodes to), so such text would end as a 500 deep in a query.
It is refused where it enters instead, as a 4xx problem document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scanner.api.problems import Problem


def is_clean(value: str) -> bool:
    """Whether ``value`` has no NUL and encodes as UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: str, where: str, code: str = "invalid_body", status: int = 422) -> str:
    """``value`` if it is clean, else a problem naming ``where``."""
    if not is_clean(value):
        raise Problem(status, code, f"{where} contains a NUL character or text that is not valid UTF-8")
    return value


def check_tree(value: Any, where: str = "body", code: str = "invalid_body") -> None:
    """Every string (keys included) of a parsed JSON document is clean."""
    if isinstance(value, str):
        check_text(value, where, code)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_text(str(key), where, code)
            check_tree(item, f"{where}.{key}", code)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            check_tree(item, f"{where}[{index}]", code)
