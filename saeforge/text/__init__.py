"""saeforge.text: local corpora -> documents -> fixed-length token contexts."""

from saeforge.text.builtin import builtin_documents
from saeforge.text.packing import PackingTokens, pack, packing_tokens, special_ids, special_token_mask
from saeforge.text.sources import ACCEPTED_SOURCES, SourceError, read_texts, render_messages

__all__ = [
    "ACCEPTED_SOURCES",
    "PackingTokens",
    "SourceError",
    "builtin_documents",
    "pack",
    "packing_tokens",
    "read_texts",
    "render_messages",
    "special_ids",
    "special_token_mask",
]
