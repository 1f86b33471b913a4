"""saeforge.interpret: top contexts, quantile samples, logit readout, LLM judge, dashboard, feature index,
attribution. See docs/interpretation.md."""

from saeforge.interpret.collect import Batch, collect_stats
from saeforge.interpret.contexts import default_decode, tokenizer_decode, top_contexts
from saeforge.interpret.dashboard import write_dashboard
from saeforge.interpret.index import build_index, search
from saeforge.interpret.judge import JudgeClient, JudgeError, judge_latents
from saeforge.interpret.pipeline import choose_latents, interpret
from saeforge.interpret.records import (
    DetectionScore,
    Interpretation,
    LatentRecord,
    TokenContext,
    TokenScore,
    load_interpretation,
    save_interpretation,
)
from saeforge.interpret.source import StoreBatches, store_batches, store_top_contexts

__all__ = [
    "Batch",
    "DetectionScore",
    "Interpretation",
    "JudgeClient",
    "JudgeError",
    "LatentRecord",
    "StoreBatches",
    "TokenContext",
    "TokenScore",
    "build_index",
    "choose_latents",
    "collect_stats",
    "default_decode",
    "interpret",
    "judge_latents",
    "load_interpretation",
    "save_interpretation",
    "search",
    "store_batches",
    "store_top_contexts",
    "tokenizer_decode",
    "top_contexts",
    "write_dashboard",
]
