"""How the CLI writes to a terminal and to a log.

In a terminal, rich draws live displays and tables. Anywhere else (CI, `| tee`, nohup) output is plain, complete
lines: no live redraws, no line cut or wrapped at the console's width, tables whole (`saeforge.report.text`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from saeforge.report.text import text_table


def make_console(stderr: bool = False):
    """A rich Console that, when its stream is not a terminal, never wraps a line (soft wrap)."""
    from rich.console import Console

    console = Console(stderr=stderr)
    console.soft_wrap = not console.is_terminal
    return console


def print_table(
    console,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str = "",
    left: Collection[int] = (0,),
) -> None:
    """Prints a table whose headers and cells are never truncated: a rich table in a terminal when it fits
    the width, else plain aligned lines (`text_table`, turned sideways when that fits). `left`: indices of
    the left-justified (text) columns."""
    from rich.measure import Measurement
    from rich.table import Table

    if console.is_terminal:
        table = Table(title=title or None)
        for i, h in enumerate(headers):
            table.add_column(
                h, justify="left" if i in left else "right", no_wrap=i not in left or i == 0, min_width=len(h)
            )
        for row in rows:
            table.add_row(*row)
        if Measurement.get(console, console.options.update_width(10_000), table).minimum <= console.width:
            console.print(table)
            return
    if title:
        console.print(title, markup=False, highlight=False, soft_wrap=True)
    for line in text_table(headers, rows, width=console.width, left=left):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
