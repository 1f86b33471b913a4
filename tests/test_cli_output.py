"""What the CLI leaves on a terminal and in a log: Ctrl-C's message survives the live display (under a
pseudo-terminal), and piped output is plain, complete lines with whole table headers."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
import torch

from saeforge.activations.writer import write_store
from tests.conftest import REPO, cli_env
from tests.screen import final_screen

WIDTH = 100


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "acts"
    g = torch.Generator().manual_seed(0)
    write_store(path, torch.randn(1024, 16, generator=g) + 1.0, hook="layers.1.resid_post", shard_rows=512)
    return path


def _terminal_env() -> dict[str, str]:
    env = cli_env(TERM="xterm-256color", COLUMNS=str(WIDTH), LINES="30")
    for key in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI"):
        env.pop(key, None)
    return env


def _read(fd: int, timeout: float) -> bytes:
    if not select.select([fd], [], [], timeout)[0]:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child closed the terminal
        return b""


def test_ctrl_c_in_a_terminal_leaves_the_stopped_line_on_screen(store, tmp_path):
    out = tmp_path / "run"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, WIDTH, 0, 0))
    cmd = [sys.executable, "-m", "saeforge", "train", "--activations", str(store), "--architecture", "topk",
           "--k", "4", "--d-sae", "64", "--tokens", str(64 * 10**6), "--batch-size", "64", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=_terminal_env(), cwd=REPO)
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 60
        metrics = out / "metrics.jsonl"
        # Training has started and the live display has drawn its metrics table.
        while not (metrics.exists() and metrics.stat().st_size > 0 and b"FVU" in screen):
            assert proc.poll() is None and time.monotonic() < deadline, screen.decode(errors="replace")
            screen += _read(master, 0.05)
        proc.send_signal(signal.SIGINT)
        while proc.poll() is None and time.monotonic() < deadline + 60:
            screen += _read(master, 0.05)
        while chunk := _read(master, 0.2):
            screen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 128 + signal.SIGINT
    text = " ".join(final_screen(screen.decode("utf-8", errors="replace"), WIDTH))
    assert "FVU" in text  # the display's last frame stays
    assert re.search(
        r"stopped by SIGINT after step \d+ of \d+; checkpoint saved at .*rerun with --resume", text
    )


def _invoke(args, columns: int):
    """The CLI in this process with stdout and stderr piped (not a terminal), as `... 2>&1 | tee` sees it."""
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


@pytest.mark.parametrize("columns", [80, 120])
def test_piped_train_and_eval_print_plain_complete_lines(store, tmp_path, columns):
    out = tmp_path / "run"
    lines = _invoke(
        ["train", "--activations", store, "--architecture", "topk", "--k", "4", "--d-sae", "64",
         "--tokens", 64 * 40, "--batch-size", 64, "--out", out, "--name", "topk-with-a-long-name"],
        columns,
    )  # fmt: skip
    assert not any("\x1b" in line or "━" in line for line in lines)  # no colours, no bars
    progress = [line for line in lines if line.startswith("train: step ")]
    assert progress and progress[-1].startswith("train: step 40/40  2560/2560 tokens (100%)")
    metric_lines = [line for line in lines if line.startswith("  topk-with-a-long-name: loss ")]
    assert len(metric_lines) == len(progress)
    for line in metric_lines:  # one whole line each, whatever the width
        assert re.fullmatch(
            r"  topk-with-a-long-name: loss \S+( {2}\w+ \S+)+  L0 \S+  FVU \S+  dead % \S+  lr \S+", line
        )
    summary = [line for line in lines if line.startswith("topk-with-a-long-name: FVU ")]
    assert len(summary) == 1 and summary[0].endswith(str(out / "topk-with-a-long-name"))  # never run together

    lines = _invoke(["eval", "--sae", out / "topk-with-a-long-name", "--activations", store, "--out", tmp_path / "e",
                     "--batch-size", 256], columns)  # fmt: skip
    assert not any("\x1b" in line or "…" in line for line in lines)  # nothing truncated
    for key in ("explained_variance", "dead_fraction", "dense_fraction_10"):
        cells = [line.split() for line in lines if line.split()[:1] == [key]]  # the table, turned sideways
        assert len(cells) == 1 and len(cells[0]) == 2, (key, lines)
        float(cells[0][1])
    table = lines[lines.index("SAE evaluation") + 1 :]
    table = table[: next(i for i, line in enumerate(table) if line.startswith("topk-with-a-long-name: "))]
    assert table[0].split() == ["name", "topk-with-a-long-name"] and all(
        len(line) <= columns for line in table
    )
    evidence = [line for line in lines if line.startswith("topk-with-a-long-name: ")]
    assert len(evidence) == 1 and re.search(r": FVU \d\.\d+", evidence[0])  # on one line, not wrapped


def test_piped_run_prints_each_stage_as_one_whole_line(capsys, monkeypatch):
    from saeforge.cli.run import _Bars

    monkeypatch.setenv("COLUMNS", "80")
    info = "topk-k32-x16: splicing the reconstruction into the model for the downstream loss (64 contexts)"
    with _Bars() as bars:
        bars.stage("evaluate layers.3.resid_post", total=None)
        bars.advance(0, info)
        bars.note("no eval_data: evaluating on the training activations (not out-of-sample), as configured")
        bars.stage("interpret layers.3.resid_post", total=None)
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"evaluate layers\.3\.resid_post: done in \d+ s  \({re.escape(info)}\)", lines[1])
    assert (
        lines[0]
        == "  no eval_data: evaluating on the training activations (not out-of-sample), as configured"
    )
    assert re.fullmatch(r"interpret layers\.3\.resid_post: done in \d+ s", lines[2]) and len(lines) == 3
