"""How numbers read on every page: one formatter, one JSON-safe cleaner."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MISSING = "–"


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: floats to `digits` significant digits, None as a dash, anything else as str (unescaped)."""
    if v is None:
        return MISSING
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


# C0 controls but tab and newline, DEL and C1 controls: shown as the text \xNN, never sent raw to a browser.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}


def no_controls(page: str) -> str:
    """`page` (a finished HTML document) with every control character but tab and newline written as the
    visible text `\\xNN`: token text and judge explanations can hold any character, the page holds none."""
    return page.translate(_CONTROLS)


def plain(v: Any) -> Any:
    """A JSON-able scalar: numpy scalars as Python ones, NaN/inf as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
