"""Packing documents into fixed-length contexts, and the special-token mask."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saeforge.text import pack, packing_tokens, read_texts, special_token_mask

WORDS = [
    "the",
    "function",
    "returns",
    "a",
    "list",
    "of",
    "strings",
    "error",
    "file",
    "module",
    "ünï",
    "✓",
    "\n",
]


@pytest.fixture(scope="module")
def bpe(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def wordpiece(tiny_wordpiece_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_wordpiece_dir)


def _stream(docs, tokenizer, separator):
    """The token stream, built one document at a time (independently of pack's batching)."""
    out = []
    for doc in docs:
        out += tokenizer.encode(doc, add_special_tokens=False) + [separator]
    return out


def _check(docs, tokenizer, context_size, prepend_bos, start, separator):
    contexts = list(pack(docs, tokenizer, context_size, prepend_bos=prepend_bos))
    stream = _stream(docs, tokenizer, separator)
    body = context_size - (start is not None)
    assert len(contexts) == len(stream) // body
    rebuilt = []
    for ctx in contexts:
        assert ctx.dtype == torch.long and ctx.shape == (context_size,)
        if start is not None:
            assert ctx[0].item() == start
            ctx = ctx[1:]
        rebuilt += ctx.tolist()
    # Nothing lost, nothing reordered: the contexts are the stream, minus a tail shorter than one context.
    assert rebuilt == stream[: len(rebuilt)]
    assert len(stream) - len(rebuilt) < body


docs_strategy = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join), min_size=1, max_size=12
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, context_size=st.integers(2, 24), prepend_bos=st.booleans())
def test_bpe_packing_invariants(bpe, docs, context_size, prepend_bos):
    start = bpe.bos_token_id if prepend_bos else None
    _check(docs, bpe, context_size, prepend_bos, start, bpe.eos_token_id)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, context_size=st.integers(2, 24), prepend_bos=st.booleans())
def test_encoder_packing_starts_with_cls_and_separates_with_sep(wordpiece, docs, context_size, prepend_bos):
    _check(docs, wordpiece, context_size, prepend_bos, wordpiece.cls_token_id, wordpiece.sep_token_id)


def test_packing_builtin_with_many_documents(bpe):
    docs = list(islice(read_texts("builtin:heldout"), 150))
    _check(docs, bpe, 128, True, bpe.bos_token_id, bpe.eos_token_id)
    contexts = list(pack(docs, bpe, 128))
    # BOS only at the start of each context; EOS between documents.
    assert all((c == bpe.bos_token_id).sum() == 1 for c in contexts)
    assert sum(int((c == bpe.eos_token_id).sum()) for c in contexts) >= len(docs) - 20


def test_without_bos_the_separator_still_applies(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    no_bos = AutoTokenizer.from_pretrained(tiny_tokenizer_dir, bos_token=None)
    assert packing_tokens(no_bos, prepend_bos=True).start is None
    _check(["one doc", "two doc"] * 20, no_bos, 8, True, None, no_bos.eos_token_id)


def test_context_size_must_leave_room(bpe):
    with pytest.raises(ValueError, match="context_size"):
        next(pack(["text"], bpe, 1))


def test_special_token_mask_matches_a_naive_loop(bpe, wordpiece):
    for tok, names in [
        (bpe, ["<|bos|>", "<|eos|>", "<|pad|>"]),
        (wordpiece, ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]),
    ]:
        specials = {tok.convert_tokens_to_ids(n) for n in names}
        ids = torch.tensor(
            [[*specials, *tok.encode("the function returns", add_special_tokens=False)]] * 2, dtype=torch.long
        )
        ids = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
        mask = special_token_mask(ids, tok)
        expected = torch.tensor([[t in specials for t in row] for row in ids.tolist()])
        assert mask.dtype == torch.bool and torch.equal(mask, expected)
        assert mask.sum() == 2 * len(specials)
