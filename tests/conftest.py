"""Shared test settings and fixtures.

Everything runs offline on CPU. Stage-specific fixtures live in each stage's own conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a `python -m saeforge` subprocess that imports this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(*args: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Runs `python -m saeforge ARGS...` and returns the completed process (text output)."""
    proc = subprocess.run(
        [sys.executable, "-m", "saeforge", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(**env),
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"saeforge {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def cli():
    """`cli("train", "--help")` runs the command in a subprocess against this checkout."""
    return run_cli
