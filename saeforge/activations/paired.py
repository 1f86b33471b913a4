"""Paired capture: a base and a fine-tuned model run over the same token contexts, for model diffing.

Both models see one token stream, the one the fine-tuned (last) model's tokenizer makes: its chat template
renders `messages` rows and its BOS/EOS/SEP tokens frame the contexts, as in Minder, Dumas et al. (2025),
where the chat model's template is applied for both models. Rows are then aligned by construction: the stores
of both models hold the same token ids at the same (sequence, position), which `check_aligned` verifies.

That stream means the same to the base model only if the base tokenizer reads the corpus the same way, so every
document is tokenized by both tokenizers and the capture is refused at the first document and token where they
differ. A fine-tune that only added special tokens passes, as long as the corpus (chat markup included) does
not use them; a start or separator token the base model has no embedding row for is refused up front.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

_BATCH = 64


class TokenizerMismatch(ValueError):
    """The base and fine-tuned tokenizers tokenize the corpus differently; the message names where."""


def _token(tokenizer, token_id: int) -> str:
    return repr(tokenizer.convert_ids_to_tokens(int(token_id)))


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((t for t, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def agreeing_texts(texts: Iterable[str], tokenizer, base_tokenizer, source: str) -> Iterator[str]:
    """Yields `texts` unchanged, after checking that `base_tokenizer` tokenizes each document as `tokenizer`
    does (both without special tokens added); raises TokenizerMismatch at the first document that differs."""
    docs = iter(texts)
    index = 0
    while batch := list(islice(docs, _BATCH)):
        want = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        got = base_tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for j, (w, g) in enumerate(zip(want, got, strict=True)):
            if w == g:
                continue
            t = _first_difference(w, g)
            base_tok = _token(base_tokenizer, g[t]) if t < len(g) else "the end of the document"
            ft_tok = _token(tokenizer, w[t]) if t < len(w) else "the end of the document"
            base_id = g[t] if t < len(g) else "-"
            ft_id = w[t] if t < len(w) else "-"
            raise TokenizerMismatch(
                f"the base and fine-tuned tokenizers disagree on the corpus: document {index + j} of {source}, "
                f"token {t}: the base tokenizer gives id {base_id} ({base_tok}), the fine-tuned one id {ft_id} "
                f"({ft_tok}). Paired capture feeds both models the same token ids, so their tokenizers must read "
                "the corpus alike (added special tokens are fine only where the corpus does not use them); "
                "use a fine-tune of this base model, or a corpus without the differing text"
            )
        index += len(batch)
        yield from batch


def check_embeddings(token_ids: Iterable[int], loaded, role: str) -> None:
    """Raises TokenizerMismatch when `loaded`'s input embedding has no row for one of `token_ids`."""
    rows = loaded.model.get_input_embeddings().num_embeddings
    bad = sorted(int(t) for t in token_ids if int(t) >= rows)
    if bad:
        raise TokenizerMismatch(
            f"the {role} model {loaded.path} has {rows} embedding rows but the fine-tuned tokenizer frames "
            f"contexts with token ids {bad}; paired capture needs a fine-tuned tokenizer whose BOS/EOS/SEP/CLS "
            "tokens the base model has"
        )
