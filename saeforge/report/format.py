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


def plain(v: Any) -> Any:
    """A JSON-able scalar: numpy scalars as Python ones, NaN/inf as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
