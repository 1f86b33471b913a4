"""saeforge.eval: judge SAEs on reconstruction, sparsity, downstream loss and dictionary health.

`evaluate(sae, batches, ...)` returns flat metrics and a verdict for one SAE; `run_eval(EvalConfig)` evaluates
SAE directories on an activation store; `write_eval_outputs` writes metrics.json files, the comparison table and
plots. Every key is documented in docs/evaluation.md.
"""

from saeforge.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "EvalConfig": "saeforge.eval.config",
        "decoder_neighbours": "saeforge.eval.dictionary",
        "duplication_metrics": "saeforge.eval.dictionary",
        "stability": "saeforge.eval.dictionary",
        "downstream_scores": "saeforge.eval.downstream",
        "evaluate": "saeforge.eval.evaluate",
        "comparison_rows": "saeforge.eval.outputs",
        "evaluation_section_html": "saeforge.eval.outputs",
        "write_eval_outputs": "saeforge.eval.outputs",
        "write_metrics": "saeforge.eval.outputs",
        "density_histogram_figure": "saeforge.eval.plots",
        "density_histogram_png": "saeforge.eval.plots",
        "pareto_figure": "saeforge.eval.plots",
        "save_png": "saeforge.eval.plots",
        "run_eval": "saeforge.eval.runner",
        "site_metrics": "saeforge.eval.sites",
        "target_metrics": "saeforge.eval.sites",
        "transcoder_downstream": "saeforge.eval.sites",
        "StreamAccumulator": "saeforge.eval.stream",
        "VERDICTS": "saeforge.eval.verdict",
        "verdict": "saeforge.eval.verdict",
    },
)
