"""`--device-map`: a model split over devices (accelerate; here CPU RAM and disk offload) captures the
activations of the unsplit model, and the option reaches capture, eval, steer and serve."""

from __future__ import annotations

import json

import pytest
import torch

from saeforge.activations import ActivationStore, capture
from saeforge.errors import ConfigError
from saeforge.models import load_model, run_hooks, splice
from saeforge.models.device_map import replica_gpus, resolve_device_map

HOOKS = ["layers.0.resid_post", "layers.1.resid_post"]
# The tiny GPT-2's blocks over "devices" the CPU provides: block 1 lives on disk and is streamed in by
# accelerate's hooks during the forward pass.
SPLIT = {
    "transformer.wte": "cpu",
    "transformer.wpe": "cpu",
    "transformer.h.0": "cpu",
    "transformer.h.1": "disk",
    "transformer.h.2": "cpu",
    "transformer.ln_f": "cpu",
    "lm_head": "cpu",
}


def test_a_split_model_records_the_unsplit_models_hooks(gpt2, tmp_path):
    plain = load_model(gpt2)
    split = load_model(gpt2, device_map=SPLIT, offload_folder=tmp_path / "offload")
    assert split.model.hf_device_map["transformer.h.1"] == "disk" and split.device == torch.device("cpu")
    auto = load_model(gpt2, device_map="auto")  # no GPU here: everything in CPU RAM
    ids = torch.randint(0, len(plain.tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    want = run_hooks(plain, ids, torch.ones_like(ids), HOOKS)
    for loaded in (split, auto):
        got = run_hooks(loaded, ids, torch.ones_like(ids), HOOKS)
        for h in HOOKS:
            torch.testing.assert_close(got[h], want[h], rtol=1e-6, atol=1e-6)

    def edited_logits(loaded):  # what steering does: replace the offloaded block's output during the forward
        with torch.no_grad(), splice(loaded, HOOKS[1], lambda a: 0.5 * a + 1.0):
            return loaded.model(input_ids=ids).logits

    plain_edit = edited_logits(plain)
    assert not torch.allclose(plain_edit, plain.model(input_ids=ids).logits.detach())
    torch.testing.assert_close(edited_logits(split), plain_edit, rtol=1e-6, atol=1e-6)


def test_capture_with_a_device_map_file_equals_the_plain_capture(reference_capture, tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(SPLIT))
    cfg = reference_capture.model_copy(update={"out": tmp_path / "out", "device_map": str(path)})
    capture(cfg)
    for hook in HOOKS:
        got = ActivationStore.open(cfg.out / hook)
        want = ActivationStore.open(reference_capture.out / hook)
        assert got.manifest.tokens == want.manifest.tokens
        for s in range(len(want.manifest.shards)):
            torch.testing.assert_close(got.shard(s), want.shard(s), rtol=1e-6, atol=1e-6)


def test_replicas_get_disjoint_gpu_groups_and_bad_maps_fail_early(tmp_path):
    assert [replica_gpus(r, 2, 8) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [replica_gpus(r, 4, 4) for r in range(4)] == [[0], [1], [2], [3]]
    assert replica_gpus(0, 2, 0) == []
    with pytest.raises(ConfigError, match="do not split evenly over 3"):
        replica_gpus(0, 3, 8)
    with pytest.raises(ConfigError, match="give auto or a JSON file"):
        resolve_device_map("balanced", None)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="non-empty object"):
        resolve_device_map(str(bad), None)
    assert resolve_device_map(None, None) == {}


@pytest.mark.parametrize("command", ["capture", "eval", "steer", "serve"])
def test_every_model_command_takes_device_map(command):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    res = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0 and "--device-map" in res.output
