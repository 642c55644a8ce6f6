"""Finding an API key in captured log records: the full key format of ``scanner.db.keys`` (a redacted key,
``rsk_<id>_***``, does not match)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

FULL_KEY = re.compile(r"rsk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
_FORMATTER = logging.Formatter("%(levelname)s %(name)s: %(message)s")


def rendered(record: logging.LogRecord) -> str:
    """The record as a handler writes it: message, traceback and stack."""
    try:
        return _FORMATTER.format(record)
    except Exception:  # noqa: BLE001 - arguments that do not fit the format: logging prints the raw parts
        return f"{record.msg} {record.args}"


def leaked_keys(records: Iterable[logging.LogRecord]) -> list[str]:
    """Each rendered record that holds a full API key."""
    return [text for text in map(rendered, records) if FULL_KEY.search(text)]
