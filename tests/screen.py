"""A minimal terminal screen for tests: replays what a program wrote to a terminal (the VT100 subset rich uses:
cursor moves, line and screen erases, colours ignored) and returns the text left on the screen."""

from __future__ import annotations

import re

_CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def final_screen(data: str, width: int = 100) -> list[str]:
    """Lines of the screen after `data` (its scrollback included), trailing spaces removed."""
    lines: list[list[str]] = [[]]
    row = col = 0

    def put(ch: str) -> None:
        nonlocal row, col
        if col >= width:
            row, col = row + 1, 0
        while len(lines) <= row:
            lines.append([])
        line = lines[row]
        line.extend(" " * (col + 1 - len(line)))
        line[col] = ch
        col += 1

    pos = 0
    while pos < len(data):
        m = _CSI.match(data, pos)
        if m:
            pos = m.end()
            params, op = m.group(1) or "", m.group(2)
            if op is None or op not in "ABCDGK" or params.startswith("?"):
                continue  # colours, cursor visibility, ...
            n = int(params.split(";")[0] or (0 if op == "K" else 1))
            if op == "A":
                row = max(0, row - n)
            elif op == "B":
                row += n
            elif op == "C":
                col += n
            elif op == "D":
                col = max(0, col - n)
            elif op == "G":
                col = n - 1
            elif op == "K":
                while len(lines) <= row:
                    lines.append([])
                line = lines[row]
                if n == 0:
                    del line[col:]
                elif n == 1:
                    line[: col + 1] = [" "] * min(col + 1, len(line))
                else:
                    line.clear()
            continue
        ch = data[pos]
        pos += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            while len(lines) <= row:
                lines.append([])
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch >= " " or ch == "\t":
            put(ch)
    return ["".join(line).rstrip() for line in lines]
