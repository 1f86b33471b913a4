"""Hook points: canonical names on every family, module paths, recording, early stop and splicing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saeforge.models import (
    SITES,
    HookError,
    builtin_example_model,
    find_blocks,
    list_hooks,
    load_model,
    record,
    resolve_hook,
    run_hooks,
    splice,
)
from tests.tiny_models import CAUSAL_FAMILIES, D_MODEL, FAMILIES, N_LAYERS

TEXT = ["The function returns a list of strings.", "Raise an exception when the file is missing."]


def _batch(loaded):
    enc = loaded.tokenizer(TEXT, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def loaded_models(tiny_model):
    return {family: load_model(tiny_model(family)) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_canonical_hook_matches_hidden_states(loaded_models, family):
    loaded = loaded_models[family]
    names = list_hooks(loaded)
    assert names == [f"layers.{i}.{s}" for i in range(N_LAYERS) for s in SITES]
    ids, mask = _batch(loaded)
    acts = run_hooks(loaded, ids, mask, names, stop_after_deepest=False)
    assert all(a.shape == (*ids.shape, D_MODEL) for a in acts.values())
    with torch.no_grad():
        reference = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for i in range(N_LAYERS):
        torch.testing.assert_close(acts[f"layers.{i}.resid_pre"], reference[i])
        if i + 1 < N_LAYERS:
            torch.testing.assert_close(acts[f"layers.{i}.resid_post"], reference[i + 1])


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_decoder_sublayers_sum_to_the_residual_update(loaded_models, family):
    loaded = loaded_models[family]
    ids, mask = _batch(loaded)
    acts = run_hooks(loaded, ids, mask, list_hooks(loaded))
    for i in range(N_LAYERS):
        pre, post = acts[f"layers.{i}.resid_pre"], acts[f"layers.{i}.resid_post"]
        update = acts[f"layers.{i}.attn_out"] + acts[f"layers.{i}.mlp_out"]
        assert update.abs().max() > 1e-3
        torch.testing.assert_close(post, pre + update, atol=1e-5, rtol=1e-5)


def test_bert_sublayers_follow_post_layernorm(loaded_models):
    loaded = loaded_models["bert"]
    ids, mask = _batch(loaded)
    acts = run_hooks(loaded, ids, mask, list_hooks(loaded))
    for i, block in enumerate(find_blocks(loaded)[1]):
        mid = block.attention.output.LayerNorm(acts[f"layers.{i}.resid_pre"] + acts[f"layers.{i}.attn_out"])
        post = block.output.LayerNorm(mid + acts[f"layers.{i}.mlp_out"])
        torch.testing.assert_close(acts[f"layers.{i}.resid_post"], post, atol=1e-5, rtol=1e-5)


def _mlp_norm_input(family: str, block, acts: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    """What each family's MLP reads, rebuilt from the block's other sites and its norm module."""
    pre, attn = acts[f"layers.{i}.resid_pre"], acts[f"layers.{i}.attn_out"]
    if family == "gpt2":
        return block.ln_2(pre + attn)
    if family == "gpt_neox":
        return block.post_attention_layernorm(pre if block.use_parallel_residual else pre + attn)
    if family.startswith("gemma"):
        return block.pre_feedforward_layernorm(pre + attn)
    if family == "bert":
        return block.attention.output.LayerNorm(pre + attn)
    return block.post_attention_layernorm(pre + attn)


def _mlp(family: str, block, x: torch.Tensor) -> torch.Tensor:
    if family == "bert":
        return block.output.dense(block.intermediate(x))
    if family.startswith("gemma"):
        return block.post_feedforward_layernorm(block.mlp(x))
    return block.mlp(x)


def _check_mlp_in(loaded, family: str) -> None:
    ids, mask = _batch(loaded)
    _, blocks = find_blocks(loaded)
    mlp_module = "intermediate" if family == "bert" else "mlp"
    block_path = find_blocks(loaded)[0]
    inputs = [f"{block_path}.{i}.{mlp_module}:input" for i in range(N_LAYERS)]
    acts = run_hooks(loaded, ids, mask, list_hooks(loaded) + inputs, stop_after_deepest=False)
    with torch.no_grad():
        for i, block in enumerate(blocks):
            mlp_in = acts[f"layers.{i}.mlp_in"]
            assert torch.equal(mlp_in, acts[inputs[i]])
            torch.testing.assert_close(mlp_in, _mlp_norm_input(family, block, acts, i), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                _mlp(family, block, mlp_in), acts[f"layers.{i}.mlp_out"], atol=1e-5, rtol=1e-5
            )
            assert not torch.allclose(mlp_in, acts[f"layers.{i}.resid_pre"], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_in_is_the_normalised_input_the_mlp_reads(loaded_models, family):
    _check_mlp_in(loaded_models[family], family)


def test_mlp_in_of_sequential_gpt_neox(loaded_models):
    loaded = loaded_models["gpt_neox"]
    _, blocks = find_blocks(loaded)
    assert all(b.use_parallel_residual for b in blocks)
    try:
        for b in blocks:
            b.use_parallel_residual = False
        _check_mlp_in(loaded, "gpt_neox")
    finally:
        for b in blocks:
            b.use_parallel_residual = True


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_stopping_early_gives_the_same_activations_and_skips_later_layers(loaded_models, family):
    loaded = loaded_models[family]
    ids, mask = _batch(loaded)
    hooks = ["layers.0.mlp_out", "layers.1.resid_post", "layers.1.attn_out"]
    _, blocks = find_blocks(loaded)
    before = [(dict(b._forward_hooks), dict(b._forward_pre_hooks)) for b in blocks]
    calls = []
    handle = blocks[2].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        early = run_hooks(loaded, ids, mask, hooks)
        assert calls == []
        full = run_hooks(loaded, ids, mask, hooks, stop_after_deepest=False)
        assert calls == [1]
    finally:
        handle.remove()
    assert list(early) == hooks
    for name in hooks:
        assert torch.equal(early[name], full[name])
    # transformers may keep its own hooks (output capturing); ours are all gone.
    assert [(dict(b._forward_hooks), dict(b._forward_pre_hooks)) for b in blocks] == before


def test_record_context_manager_suppresses_only_its_stop(loaded_models):
    loaded = loaded_models["qwen3"]
    ids, _ = _batch(loaded)
    block = find_blocks(loaded)[1][0]
    before = dict(block._forward_hooks)
    with torch.no_grad(), record(loaded, ["layers.0.resid_post"]) as acts:
        loaded.model(input_ids=ids)
        pytest.fail("the forward should have been cut after layer 0")
    assert acts["layers.0.resid_post"].shape == (*ids.shape, D_MODEL)
    with pytest.raises(RuntimeError, match="boom"), record(loaded, ["layers.0.resid_post"]):
        raise RuntimeError("boom")
    assert dict(block._forward_hooks) == before


def test_module_paths_and_input_suffix(loaded_models):
    loaded = loaded_models["llama"]
    ids, mask = _batch(loaded)
    hooks = [
        "layers.1.mlp_out",
        "model.layers.1.mlp",
        "layers.1.resid_pre",
        "model.layers.1:input",
        "model.layers.1.mlp:input",
        "model.layers.1.post_attention_layernorm:output",
        "model.layers.0.self_attn:input",
        "model.layers.0.input_layernorm",
        "model.norm",
    ]
    points = [resolve_hook(loaded, h) for h in hooks]
    assert [p.layer for p in points] == [1, 1, 1, 1, 1, 1, 0, 0, None]
    assert [p.io for p in points[:5]] == ["output", "output", "input", "input", "input"]
    acts = run_hooks(loaded, ids, mask, hooks)
    assert torch.equal(acts["layers.1.mlp_out"], acts["model.layers.1.mlp"])
    assert torch.equal(acts["layers.1.resid_pre"], acts["model.layers.1:input"])
    assert torch.equal(
        acts["model.layers.1.mlp:input"], acts["model.layers.1.post_attention_layernorm:output"]
    )
    # self_attn receives hidden_states as a keyword argument.
    assert torch.equal(acts["model.layers.0.self_attn:input"], acts["model.layers.0.input_layernorm"])
    assert acts["model.norm"].shape == (*ids.shape, D_MODEL)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("layers.3.resid_post", r"layer 3 does not exist, the model has 3 blocks \(0\.\.2\)"),
        ("layers.0.resid_mid", r"unknown site 'resid_mid'.*resid_pre,resid_post,attn_out,mlp_out"),
        ("model.layers.0.mpl", r"Did you mean .*model\.layers\.0\.mlp"),
        ("blocks.0.hook_resid_post", r"layers\.\{i\}\.\{resid_pre.*with i in 0\.\.2.*:input"),
        ("model.layers.0.mlp:inputs", r"must be 'input' or 'output'"),
        ("", r"unknown hook ''"),
    ],
)
def test_wrong_hook_names_list_valid_ones(loaded_models, name, expected):
    with pytest.raises(HookError, match=expected):
        resolve_hook(loaded_models["llama"], name)


def test_splice_identity_is_exact_and_edits_change_logits(loaded_models):
    loaded = loaded_models["gemma2"]
    ids, mask = _batch(loaded)
    with torch.no_grad():
        base = loaded.model(input_ids=ids, attention_mask=mask).logits
        with splice(loaded, "layers.1.resid_post", lambda a: a):
            same = loaded.model(input_ids=ids, attention_mask=mask).logits
        with splice(loaded, "layers.1.resid_post", lambda a: a + 1.0):
            moved = loaded.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(base, same)
    assert (base - moved).abs().max() > 1e-3
    with torch.no_grad():
        again = loaded.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(base, again)


def test_splice_runs_before_other_hooks_and_zero_ablation_is_exact(loaded_models):
    loaded = loaded_models["mistral"]
    ids, mask = _batch(loaded)
    with torch.no_grad(), record(loaded, list_hooks(loaded)[:4], stop_after_deepest=False) as acts:
        with splice(loaded, "layers.0.mlp_out", torch.zeros_like):
            loaded.model(input_ids=ids, attention_mask=mask)
    assert torch.equal(acts["layers.0.mlp_out"], torch.zeros_like(acts["layers.0.mlp_out"]))
    torch.testing.assert_close(
        acts["layers.0.resid_post"], acts["layers.0.resid_pre"] + acts["layers.0.attn_out"]
    )


def test_splice_is_removed_on_error_and_checks_shape(loaded_models):
    loaded = loaded_models["gpt_neox"]
    ids, mask = _batch(loaded)
    module = resolve_hook(loaded, "layers.0.attn_out").module
    before = dict(module._forward_hooks)
    with pytest.raises(ValueError, match=r"must return a tensor shaped \(2, \d+, 64\), got \(2, \d+, 32\)"):
        with torch.no_grad(), splice(loaded, "layers.0.attn_out", lambda a: a[..., :32]):
            loaded.model(input_ids=ids, attention_mask=mask)
    assert dict(module._forward_hooks) == before


class _ToyBlock(nn.Module):
    def __init__(self, returns_tuple: bool):
        super().__init__()
        self.self_attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states, attention_mask=None):
        x = hidden_states + self.self_attn(hidden_states)
        x = x + self.mlp(x)
        return (x, None) if self.returns_tuple else x


class _ToyModel(nn.Module):
    """A stand-in for other transformers versions: blocks return tuples or tensors, take input by keyword or not."""

    def __init__(self, returns_tuple: bool, keyword_input: bool):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(16, 8)
        self.layers = nn.ModuleList(_ToyBlock(returns_tuple) for _ in range(2))
        self.keyword_input = keyword_input

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        for block in self.layers:
            out = block(hidden_states=x) if self.keyword_input else block(x)
            x = out[0] if isinstance(out, tuple) else out
        return x


@pytest.mark.parametrize("returns_tuple", [False, True])
@pytest.mark.parametrize("keyword_input", [False, True])
def test_tuple_or_tensor_outputs_and_keyword_or_positional_inputs(returns_tuple, keyword_input):
    model = _ToyModel(returns_tuple, keyword_input)
    ids = torch.randint(0, 16, (2, 5))
    acts = run_hooks(model, ids, hooks=list_hooks(model), stop_after_deepest=False)
    x = model.embed(ids).detach()
    for i, block in enumerate(model.layers):
        torch.testing.assert_close(acts[f"layers.{i}.resid_pre"], x)
        attn = block.self_attn(x)
        mlp = block.mlp(x + attn)
        x = (x + attn + mlp).detach()
        torch.testing.assert_close(acts[f"layers.{i}.attn_out"], attn.detach())
        torch.testing.assert_close(acts[f"layers.{i}.mlp_out"], mlp.detach())
        torch.testing.assert_close(acts[f"layers.{i}.resid_post"], x)
    with torch.no_grad():
        base = model(ids)
        with splice(model, "layers.1.resid_pre", lambda a: a * 0):
            spliced = model(ids)
        with splice(model, "layers.0.resid_post", lambda a: a * 0):
            spliced_out = model(ids)
    torch.testing.assert_close(spliced, spliced_out)
    assert not torch.equal(base, spliced)


def test_minilm_layer3_resid_post():
    loaded = load_model(builtin_example_model())
    assert list_hooks(loaded) == [f"layers.{i}.{s}" for i in range(6) for s in SITES]
    enc = loaded.tokenizer(TEXT, return_tensors="pt", padding=True)
    acts = run_hooks(loaded, enc["input_ids"], enc["attention_mask"], ["layers.3.resid_post"])
    with torch.no_grad():
        reference = loaded.model(**enc, output_hidden_states=True).hidden_states[4]
    assert acts["layers.3.resid_post"].shape == (*enc["input_ids"].shape, 384)
    torch.testing.assert_close(acts["layers.3.resid_post"], reference)
