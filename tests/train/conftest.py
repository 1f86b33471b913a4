"""Fixtures of the training tests: the tiny SAE stand-in and the synthetic source live in _support.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import _support  # noqa: E402


@pytest.fixture(autouse=True)
def tiny_sae():
    _support.install_tiny_sae()
