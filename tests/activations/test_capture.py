"""Capture: rows equal the model's activations, stats match float64, mixtures, outliers, NaN, disk, short corpus."""

from __future__ import annotations

import json

import pytest
import torch

from saeforge.activations import ActivationStore, CaptureError, CorpusExhausted, NonFiniteActivations, capture
from saeforge.models import load_model, run_hooks
from saeforge.text import special_token_mask


def _all(store: ActivationStore) -> dict[str, torch.Tensor]:
    shards = [store.shard(i) for i in range(store.num_shards)]
    return {k: torch.cat([s[k] for s in shards]) for k in ("activations", "token_ids", "positions")}


def _reference_acts(loaded, store: ActivationStore, hook: str) -> dict[int, torch.Tensor]:
    """Activations [context_size, d_in] of every stored context, recomputed one context at a time."""
    seqs = torch.unique(_all(store)["positions"][:, 0]).tolist()
    out = {}
    for s in seqs:
        ctx = store.context(s)[None]
        out[s] = run_hooks(loaded, ctx, torch.ones_like(ctx), [hook])[hook][0]
    return out


def test_rows_are_the_models_activations(reference_capture):
    cfg = reference_capture
    loaded = load_model(cfg.model)
    for hook in cfg.hooks:
        store = ActivationStore.open(cfg.out / hook, verify="now")
        rows = _all(store)
        assert store.num_rows == cfg.tokens and store.manifest.complete
        assert [s.rows for s in store.manifest.shards] == [256] * 5 + [1500 - 5 * 256]
        ref = _reference_acts(loaded, store, hook)
        seq, pos = rows["positions"].unbind(1)
        expected = torch.stack([ref[s][p] for s, p in zip(seq.tolist(), pos.tolist(), strict=True)])
        torch.testing.assert_close(rows["activations"], expected, rtol=1e-5, atol=1e-5)
        contexts = torch.stack([store.context(s) for s in seq.tolist()])
        assert torch.equal(rows["token_ids"], contexts[torch.arange(len(pos)), pos])
        assert not special_token_mask(rows["token_ids"], loaded.tokenizer).any()
        # Rows come in stream order: (sequence, position) strictly increasing.
        key = seq * cfg.context_size + pos
        assert bool((key[1:] > key[:-1]).all())
        counts = store.manifest.tokens
        assert counts.seen == cfg.tokens and counts.rows == cfg.tokens and counts.outliers_dropped == 0
        n_ctx = int(seq.max()) + 1
        assert counts.special_excluded > 0 and store.manifest.corpus[0].contexts == n_ctx


def test_stats_match_float64_recomputation(reference_capture):
    store = ActivationStore.open(reference_capture.out / "layers.1.resid_post")
    x = _all(store)["activations"].double()
    stats = store.stats
    assert stats.count == x.shape[0]
    torch.testing.assert_close(
        torch.tensor(stats.mean, dtype=torch.float64), x.mean(0), rtol=1e-10, atol=1e-10
    )
    assert stats.mean_sq_norm == pytest.approx(float((x * x).sum(1).mean()), rel=1e-10)
    assert stats.mean_norm == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-10)


def test_manifest_is_a_run_card(reference_capture):
    m = json.loads((reference_capture.out / "layers.0.resid_post" / "manifest.json").read_text())
    assert m["hook"] == "layers.0.resid_post" and m["d_in"] == 64 and m["dtype"] == "float32"
    assert len(m["model"]["fingerprint"]) == 64 and m["model"]["family"] == "gpt2"
    assert m["context_size"] == 32 and m["prepend_bos"] and m["exclude_special"]
    assert m["corpus"][0]["source"] == "builtin" and m["tokens"]["requested"] == 1500
    assert all(len(s["sha256"]) == 64 for s in m["shards"]) and "progress" not in m


def test_already_complete_returns_without_work(reference_capture, monkeypatch):
    import saeforge.models

    monkeypatch.setattr(saeforge.models, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    before = (reference_capture.out / "layers.0.resid_post" / "manifest.json").read_bytes()
    capture(reference_capture)
    assert (reference_capture.out / "layers.0.resid_post" / "manifest.json").read_bytes() == before


def test_other_settings_refused(reference_capture):
    cfg = reference_capture.model_copy(update={"tokens": 1600})
    with pytest.raises(CaptureError, match="other settings.*tokens: 1500 there vs 1600 now"):
        capture(cfg)


def test_dtype_bfloat16(make_cfg):
    cfg = make_cfg(dtype="bfloat16", tokens=300)
    capture(cfg)
    store = ActivationStore.open(cfg.out)
    assert store.dtype == torch.bfloat16 and store.shard(0)["activations"].dtype == torch.bfloat16
    loaded = load_model(cfg.model)
    rows = _all(store)
    ref = _reference_acts(loaded, store, cfg.hooks[0])
    s, p = rows["positions"][7].tolist()
    assert torch.equal(rows["activations"][7], ref[s][p].to(torch.bfloat16))


def test_outlier_dropping_matches_reference(make_cfg):
    cfg = make_cfg(drop_outliers=1.15, tokens=800)
    capture(cfg)
    store = ActivationStore.open(cfg.out)
    loaded = load_model(cfg.model)
    rows = _all(store)
    kept = {tuple(p) for p in rows["positions"].tolist()}
    dropped, candidates = 0, 0
    n_ctx = int(rows["positions"][:, 0].max()) + 1
    for s in range(n_ctx):
        ctx = store.context(s)
        if ctx is None:
            continue  # a context whose rows were all dropped: checked through the counts below
        acts = run_hooks(loaded, ctx[None], torch.ones_like(ctx[None]), cfg.hooks)[cfg.hooks[0]][0]
        nonspecial = ~special_token_mask(ctx, loaded.tokenizer)
        norms = acts.norm(dim=-1)
        median = norms[nonspecial].median()
        for p in nonspecial.nonzero()[:, 0].tolist():
            if candidates == cfg.tokens:
                break
            candidates += 1
            is_outlier = bool(norms[p] > cfg.drop_outliers * median)
            dropped += is_outlier
            assert ((s, p) in kept) == (not is_outlier), (s, p)
    assert dropped > 0
    assert store.manifest.tokens.outliers_dropped == dropped
    assert store.num_rows + dropped == cfg.tokens


def _texts(path, word, n):
    path.write_text("\n\n".join(f"{word} number {i} is here and {word} again." for i in range(n)))
    return str(path)


def test_mixture_proportions(make_cfg, tmp_path):
    a = _texts(tmp_path / "a.txt", "apple", 600)
    b = _texts(tmp_path / "b.txt", "zebra", 600)
    cfg = make_cfg(
        data=[{"source": a, "weight": 0.8}, {"source": b, "weight": 0.2}], tokens=4000, context_size=16
    )
    capture(cfg)
    store = ActivationStore.open(cfg.out)
    cards = {c.source: c.contexts for c in store.manifest.corpus}
    n = cards[a] + cards[b]
    assert n == int(_all(store)["positions"][:, 0].max()) + 1
    share = cards[b] / n  # binomial(n, 0.2): 4 standard deviations
    assert abs(share - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5
    tok = load_model(cfg.model).tokenizer
    from_b = sum("zebra" in tok.decode(store.context(s)) for s in range(n))
    assert from_b == cards[b]


def test_chat_messages_rendered(make_cfg, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "ok"}]}
        for i in range(60)
    ]
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = make_cfg(data=str(src), tokens=200)
    capture(cfg)
    store = ActivationStore.open(cfg.out)
    text = load_model(cfg.model).tokenizer.decode(store.context(0))
    assert "<|user|>" in text and "<|assistant|>" in text


def test_nan_reported_with_shard_and_row(make_cfg, monkeypatch, reference_capture):
    import saeforge.models

    plant_seq, plant_pos = 21, 9  # in forward batch 5 (contexts 20..23)
    real = saeforge.models.run_hooks

    def poisoned(loaded, ids, mask, hooks):
        out = real(loaded, ids, mask, hooks)
        if ids.shape[0] == 4 and torch.equal(ids, torch.stack([store.context(s) for s in range(20, 24)])):
            out[hooks[0]][plant_seq - 20, plant_pos] = float("nan")
        return out

    store = ActivationStore.open(reference_capture.out / "layers.1.resid_post")
    where = ((_all(store)["positions"] == torch.tensor([plant_seq, plant_pos])).all(1)).nonzero()[0, 0]
    shard, row = divmod(int(where), 256)
    monkeypatch.setattr(saeforge.models, "run_hooks", poisoned)
    cfg = make_cfg()
    with pytest.raises(NonFiniteActivations) as err:
        capture(cfg)
    msg = str(err.value)
    assert f"shard-000-{shard:06d}" in msg and f"row {row} " in msg
    assert f"sequence {plant_seq}, position {plant_pos}" in msg
    partial = json.loads((cfg.out / cfg.hooks[0] / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == shard


def test_disk_space_refused_before_writing(make_cfg, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    cfg = make_cfg()
    with pytest.raises(CaptureError, match=r"not enough disk space.*GiB missing"):
        capture(cfg)
    assert not list((cfg.out / cfg.hooks[0]).glob("*.safetensors"))


def test_short_corpus_keeps_what_was_written(make_cfg, tmp_path):
    src = _texts(tmp_path / "short.txt", "tiny", 40)
    cfg = make_cfg(data=src, tokens=100_000)
    with pytest.raises(CorpusExhausted, match=r"ran out.*short.txt.*of the 100000 tokens.*kept"):
        capture(cfg)
    store = ActivationStore.open(cfg.out, verify="now")
    m = store.manifest
    assert not m.complete and m.exhausted and 0 < store.num_rows == m.tokens.seen < 100_000
    assert store.stats.count == store.num_rows
