"""CSV cells a spreadsheet opens safely: text that would run as a formula is quoted."""

from __future__ import annotations

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """A text cell a spreadsheet will not evaluate as a formula (a leading `'` before = + - @)."""
    return "'" + value if value.startswith(FORMULA_START) else value
