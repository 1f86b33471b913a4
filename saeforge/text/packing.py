"""Tokenizing and packing documents into fixed-length contexts.

The packing rule, for `pack(texts, tokenizer, context_size, prepend_bos)`:

1. Every document is tokenized without special tokens and followed by a separator: the tokenizer's EOS token,
   or its SEP token when it has no EOS (BERT-style encoders). The documents form one token stream.
2. Each context starts with a start token, then holds the next `context_size - 1` tokens of the stream:
   - an encoder tokenizer (one with CLS and SEP, such as BERT's) starts every context with CLS, always;
   - otherwise, when `prepend_bos` is true and the tokenizer has a BOS token, every context starts with BOS
     (so every context, not only those where a document begins, looks like the start of a sequence);
   - otherwise there is no start token and a context is the next `context_size` tokens of the stream.
   A document longer than one context continues in the next context, after its start token.
3. The tail of the stream too short to fill a whole context is dropped.

Every context therefore has exactly `context_size` tokens, and reading the contexts in order without their
start tokens gives back the token stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch

_TOKENIZE_BATCH = 64


@dataclass(frozen=True)
class PackingTokens:
    """The special tokens `pack` uses: `start` begins every context (or None), `separator` ends each document."""

    start: int | None
    separator: int


def packing_tokens(tokenizer, prepend_bos: bool = True) -> PackingTokens:
    """The start and separator tokens the packing rule (module docstring) picks for this tokenizer."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    encoder = cls_id is not None and sep_id is not None and bos_id is None
    separator = sep_id if encoder or eos_id is None else eos_id
    if separator is None:
        raise ValueError(
            "the tokenizer has neither an EOS nor a SEP token, so documents cannot be separated; "
            "set eos_token in the model's tokenizer_config.json"
        )
    if encoder:
        return PackingTokens(start=cls_id, separator=separator)
    return PackingTokens(start=bos_id if prepend_bos else None, separator=separator)


def _tokenized(texts: Iterable[str], tokenizer) -> Iterator[list[int]]:
    docs = iter(texts)
    while batch := list(islice(docs, _TOKENIZE_BATCH)):
        yield from tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]


def pack(
    texts: Iterable[str], tokenizer, context_size: int, prepend_bos: bool = True
) -> Iterator[torch.Tensor]:
    """Packs documents into contexts: yields LongTensor [context_size] (rule in the module docstring).

    texts: documents (e.g. from `read_texts`); tokenizer: a Hugging Face tokenizer; prepend_bos: start every
    context with BOS when the tokenizer has one (encoders always start with CLS).
    """
    tokens = packing_tokens(tokenizer, prepend_bos)
    body = context_size - (tokens.start is not None)
    if body < 1:
        raise ValueError(
            f"context_size must leave room for at least one token after the start token; got {context_size}"
        )
    prefix = [] if tokens.start is None else [tokens.start]
    stream: list[int] = []
    for ids in _tokenized(texts, tokenizer):
        stream += ids
        stream.append(tokens.separator)
        full = len(stream) // body
        for j in range(full):
            yield torch.tensor(prefix + stream[j * body : (j + 1) * body], dtype=torch.long)
        stream = stream[full * body :]


def special_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's special tokens: BOS, EOS, PAD, CLS, SEP, UNK, MASK and any additional ones."""
    ids = set(tokenizer.all_special_ids)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.add(int(value))
    return sorted(ids)


def special_token_mask(token_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """BoolTensor shaped like `token_ids` (any shape), True where the token is one of `special_ids(tokenizer)`.

    Training activations leave these positions out by default: BOS/CLS positions are attention sinks with
    outlying norms, and EOS/SEP/PAD carry no text.
    """
    ids = torch.tensor(special_ids(tokenizer), dtype=token_ids.dtype, device=token_ids.device)
    return torch.isin(token_ids, ids)
