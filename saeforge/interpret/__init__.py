"""saeforge.interpret: top contexts, quantile samples, logit readout, LLM judge, dashboard, feature index,
attribution. See docs/interpretation.md."""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "InterpretConfig": "saeforge.interpret.config",
        "AttributeConfig": "saeforge.interpret.config",
        "Batch": "saeforge.interpret.collect",
        "collect_stats": "saeforge.interpret.collect",
        "default_decode": "saeforge.interpret.contexts",
        "tokenizer_decode": "saeforge.interpret.contexts",
        "top_contexts": "saeforge.interpret.contexts",
        "build_index": "saeforge.interpret.index",
        "search": "saeforge.interpret.index",
        "JudgeClient": "saeforge.interpret.client",
        "JudgeError": "saeforge.interpret.client",
        "judge_latents": "saeforge.interpret.judge",
        "choose_latents": "saeforge.interpret.pipeline",
        "interpret": "saeforge.interpret.pipeline",
        "DetectionScore": "saeforge.interpret.records",
        "Interpretation": "saeforge.interpret.records",
        "LatentRecord": "saeforge.interpret.records",
        "TokenContext": "saeforge.interpret.records",
        "TokenScore": "saeforge.interpret.records",
        "load_interpretation": "saeforge.interpret.records",
        "save_interpretation": "saeforge.interpret.records",
        "StoreBatches": "saeforge.interpret.source",
        "store_batches": "saeforge.interpret.source",
        "store_top_contexts": "saeforge.interpret.source",
    },
)
