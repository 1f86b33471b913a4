"""How a context's tokens show on a page: as the text the model read, special tokens as quiet markers."""

from __future__ import annotations

import re

# [CLS], [SEP], [PAD] (BERT); <|endoftext|>, <|bos|> (byte-level BPE); <s>, </s>, <pad>, <unk> (SentencePiece).
_MARKER = re.compile(r"\s*(\[[A-Z]+\]|<\|[^|<>\s]+\|>|</?s>|<(?:pad|unk|bos|eos|mask)>)\s*")


def is_marker(token: str) -> bool:
    """True for a tokenizer's special token (sequence start/end, separator, padding), as decoded."""
    return _MARKER.fullmatch(token) is not None


def context_text(tokens: list[str]) -> list[str]:
    """The tokens as displayed in a line: the window's first token and any token after a marker lose their
    leading space (a window starts mid-text; a marker stands apart by its style, not a space)."""
    out = []
    for i, tok in enumerate(tokens):
        if i == 0 or is_marker(tokens[i - 1]) or is_marker(tok):
            tok = tok.lstrip(" ") if not is_marker(tok) else tok.strip()
        out.append(tok)
    return out
