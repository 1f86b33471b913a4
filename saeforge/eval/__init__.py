"""saeforge.eval: judge SAEs on reconstruction, sparsity, downstream loss and dictionary health.

`evaluate(sae, batches, ...)` returns flat metrics and a verdict for one SAE; `run_eval(EvalConfig)` evaluates
SAE directories on an activation store; `write_eval_outputs` writes metrics.json files, the comparison table and
plots. Every key is documented in docs/evaluation.md.
"""

from saeforge.eval.dictionary import decoder_neighbours, duplication_metrics, stability
from saeforge.eval.downstream import downstream_scores
from saeforge.eval.evaluate import evaluate
from saeforge.eval.outputs import comparison_rows, evaluation_section_html, write_eval_outputs, write_metrics
from saeforge.eval.plots import density_histogram_figure, density_histogram_png, pareto_figure, save_png
from saeforge.eval.runner import EvalConfig, run_eval
from saeforge.eval.stream import StreamAccumulator
from saeforge.eval.verdict import VERDICTS, verdict

__all__ = [
    "VERDICTS",
    "EvalConfig",
    "StreamAccumulator",
    "comparison_rows",
    "decoder_neighbours",
    "density_histogram_figure",
    "density_histogram_png",
    "downstream_scores",
    "duplication_metrics",
    "evaluate",
    "evaluation_section_html",
    "pareto_figure",
    "run_eval",
    "save_png",
    "stability",
    "verdict",
    "write_eval_outputs",
    "write_metrics",
]
