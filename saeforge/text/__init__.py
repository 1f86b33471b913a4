"""saeforge.text: local corpora -> documents -> fixed-length token contexts.

Names are imported on first use (`saeforge.lazy`): reading and checking sources needs no torch; packing does.
"""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "ACCEPTED_SOURCES": "saeforge.text.sources",
        "PackingTokens": "saeforge.text.packing",
        "SourceError": "saeforge.text.sources",
        "builtin_documents": "saeforge.text.builtin",
        "check_source": "saeforge.text.sources",
        "pack": "saeforge.text.packing",
        "packing_tokens": "saeforge.text.packing",
        "read_texts": "saeforge.text.sources",
        "render_messages": "saeforge.text.sources",
        "special_ids": "saeforge.text.packing",
        "special_token_mask": "saeforge.text.packing",
    },
)
