"""saeforge.diff: what did fine-tuning change? Per-latent analysis of a crosscoder trained on a base and a
fine-tuned model's aligned activations (decoder norms, Latent Scaling, categories), side-by-side contexts, the
causal check, and `run_diff` tying them together. See docs/diffing.md."""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "LATENT_FIELDS": "saeforge.diff.analysis",
        "category_counts": "saeforge.diff.analysis",
        "diff_latents": "saeforge.diff.analysis",
        "top_latents": "saeforge.diff.analysis",
        "CATEGORIES": "saeforge.diff.categories",
        "Thresholds": "saeforge.diff.categories",
        "categorize": "saeforge.diff.categories",
        "causal_check": "saeforge.diff.causal",
        "BASE": "saeforge.diff.coder",
        "FINETUNED": "saeforge.diff.coder",
        "PairCoder": "saeforge.diff.coder",
        "check_pair_coder": "saeforge.diff.coder",
        "DiffConfig": "saeforge.diff.config",
        "side_by_side": "saeforge.diff.contexts",
        "write_diff_outputs": "saeforge.diff.outputs",
        "DiffResult": "saeforge.diff.run",
        "run_diff": "saeforge.diff.run",
        "ActivationStats": "saeforge.diff.stats",
        "DecoderStats": "saeforge.diff.stats",
        "activation_stats": "saeforge.diff.stats",
        "decoder_stats": "saeforge.diff.stats",
    },
)
