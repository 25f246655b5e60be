"""Plain-text tables of the command-line tools (`keys list`, `keys usage`): each column
as wide as its widest cell, two spaces between columns."""

from __future__ import annotations

from typing import Sequence


def columns(rows: Sequence[Sequence[str]]) -> str:
    """`rows` (the header first) as aligned lines, without trailing spaces."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in
                               zip(row, widths, strict=True)).rstrip() for row in rows)
