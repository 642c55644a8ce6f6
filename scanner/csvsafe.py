"""CSV cells that a spreadsheet would run as a formula are neutralised (OWASP "CSV injection").

Spreadsheets treat a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some, a tab or carriage return
before one) as a formula; a tenant's page or image URL, a label or a note could then run ``=HYPERLINK(...)``
or worse on the machine of whoever opens the export. Such text cells get a leading apostrophe, which
spreadsheets show as text. Numbers are left alone: ``-0.5`` is a value, not a formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with every text cell neutralised; use on every row written to a CSV export."""
    return {column: safe_cell(value) for column, value in row.items()}
