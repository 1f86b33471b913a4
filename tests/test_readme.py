"""Every `saeforge` command of the README's shell blocks runs as written, in order, in an empty directory where
`./my-model` (and `./base`, `./finetuned`) are tiny local models: the only paths the test creates.

The commands run in process (one interpreter, models cached by the OS) so the whole README costs seconds. The
first block (install, then `saeforge run`) is the built-in example itself, timed in the README and covered by
tests/pipeline; `saeforge serve` starts a server that runs until stopped and `saeforge audit` reads the log it
writes, both covered by tests/serve.
"""

from __future__ import annotations

import re
import shlex

from tests.conftest import REPO

# Commands that need what no quick test has: the built-in example's 5 minutes, a server, its audit log.
NOT_RUN_HERE = {"run": "tests/pipeline", "serve": "tests/serve", "audit": "tests/serve/test_audit.py"}


def readme_commands() -> list[str]:
    """The `saeforge ...` lines of the README's ```bash blocks (continuations joined), in order."""
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                if part.strip().startswith("saeforge"):
                    lines.append(part.strip())
    return lines


def test_readme_shows_the_pipeline():
    names = [shlex.split(c)[1] for c in readme_commands()]
    for name in ("plan", "capture", "verify", "train", "eval", "interpret", "features", "attribute", "steer"):
        assert name in names, name


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, tiny_model, tiny_pair):
    import torch
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    (tmp_path / "my-model").symlink_to(tiny_model("gpt2"))
    (tmp_path / "base").symlink_to(tiny_pair[0])
    (tmp_path / "finetuned").symlink_to(tiny_pair[1])
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ran = []
    try:
        for line in readme_commands():
            args = shlex.split(line)[1:]
            if args[0] in NOT_RUN_HERE:
                continue
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, f"{line}\n{result.output}"
            ran.append(args[0])
    finally:
        torch.set_num_threads(threads)
    assert {"capture", "train", "eval", "interpret", "attribute", "steer", "diff"} <= set(ran)
    assert (tmp_path / "sae" / "topk" / "cfg.json").is_file()
    assert (tmp_path / "dash" / "index.html").is_file() and (tmp_path / "diff" / "diff_report.html").is_file()
