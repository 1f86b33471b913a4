"""Plain-text tables for logs and terminals: every header and cell whole, columns padded, no box characters.

A table too wide for the page is turned on its side (one line per column, one column per row), which is how a
table of many metrics for a few SAEs reads best at 80 columns; a table that fits neither way is printed whole
(complete lines matter more in a log than the width).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def _lines(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Collection[int]) -> list[str]:
    """Aligned lines: the columns at indices `left` left-justified, the rest right-justified."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def text_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int | None = None,
    left: Collection[int] = (0,),
) -> list[str]:
    """The table as lines no longer than `width` when that can be done (else whole, never cut).

    headers: [n_columns] names; rows: [n_rows][n_columns] cell texts; left: indices of text columns.
    """
    lines = _lines(headers, rows, left)
    if width is None or max(map(len, lines)) <= width or not rows:
        return lines
    sideways = _lines(
        [headers[0], *(r[0] for r in rows)],
        [[h, *(r[i] for r in rows)] for i, h in enumerate(headers) if i > 0],
        left=(0,),
    )
    return sideways if max(map(len, sideways)) <= width else lines
