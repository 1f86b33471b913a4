"""The training tests import their synthetic source and subprocess worker from _support.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
