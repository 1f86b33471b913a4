"""StreamingSource: batches are the model's activations, shuffled in token-sized blocks, exactly resumable."""

from __future__ import annotations

import json

import pytest
import torch

from saeforge.activations import StreamingSource
from saeforge.models import load_model, run_hooks
from saeforge.text import pack, read_texts, special_token_mask

HOOK = "layers.1.resid_post"


@pytest.fixture(scope="module")
def loaded(gpt2):
    return load_model(gpt2)


def _source(loaded, **kw):
    args = dict(batch_size=32, buffer_tokens=256, context_size=32, seed=4, forward_batch=4)
    args.update(kw)
    return StreamingSource(loaded, HOOK, "builtin", **args)


def test_rows_are_activations_of_the_first_block(loaded):
    src = _source(loaded)
    batch = next(src)
    assert batch.shape == (32, 64) and batch.dtype == torch.float32
    contexts = torch.stack(
        [c for c, _ in zip(pack(read_texts("builtin"), loaded.tokenizer, 32), range(8), strict=False)]
    )
    acts = run_hooks(loaded, contexts, torch.ones_like(contexts), [HOOK])[HOOK]
    pool = acts[~special_token_mask(contexts, loaded.tokenizer)]  # the block's candidate rows
    dist = torch.cdist(batch, pool, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert bool((dist < 1e-4).all())
    # Shuffled: the batch is not the block's first 32 rows in order.
    assert not torch.allclose(batch, pool[:32])
    assert src.last_source()[0][0] == f"streaming {HOOK} epoch 0 block 0"


def test_exact_resume_and_epochs(loaded):
    ref = _source(loaded, buffer_tokens=128)
    expected = [next(ref) for _ in range(12)]
    first = _source(loaded, buffer_tokens=128)
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _source(loaded, buffer_tokens=128)
    resumed.load_state_dict(state)
    for want in expected[5:]:
        assert torch.equal(next(resumed), want)
    assert resumed.state_dict()["block"] > 0


def test_ranks_get_disjoint_rows(loaded):
    r0, r1 = (_source(loaded, rank=r, world_size=2) for r in (0, 1))
    a, b = next(r0), next(r1)
    assert a.shape == b.shape == (16, 64)
    assert float(torch.cdist(a, b).min()) > 1e-6
    assert r0.state_dict() == r1.state_dict()


def test_the_rank_comes_from_the_shared_dist_context(loaded, monkeypatch):
    from saeforge.distributed import DistContext

    by_args = next(_source(loaded, rank=1, world_size=2))
    by_ctx = _source(loaded, ctx=DistContext(rank=1, world_size=2))
    assert (by_ctx.rank, by_ctx.world_size) == (1, 2) and by_ctx.ctx.world_size == 2
    assert torch.equal(next(by_ctx), by_args)
    monkeypatch.setenv("WORLD_SIZE", "1")  # not under torchrun: DistContext.from_env is rank 0 of 1
    single = _source(loaded)
    assert (single.ctx.rank, single.ctx.world_size, single.ctx.owns_group) == (0, 1, False)
    assert next(single).shape == (32, 64)
    single.close()
    with pytest.raises(ValueError, match="either ctx or rank/world_size"):
        _source(loaded, ctx=DistContext(), rank=0)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        _source(loaded, rank=2, world_size=2)


def test_scale_is_sqrt_d_over_mean_norm(loaded):
    src = _source(loaded)
    scale = src.activation_scale
    x = next(src) * scale
    assert x.norm(dim=1).mean() == pytest.approx(8.0, rel=0.3)
