"""`saeforge run`: the whole pipeline a YAML config describes, composed from the stages' own APIs.

    model + corpus -> capture (train and held-out stores, one per hook) -> train the SAEs on each hook
    -> evaluate them on held-out activations (and downstream through the model) -> sample latents' contexts
    -> run directory: config.yaml, activations/, saes/<hook>/<name>/ (cfg.json, sae_weights.safetensors,
       metrics.json), eval/, report.html

Every YAML key is a field of a typed config: the top-level keys are `RunConfig`'s, and the `capture`, `train`
and `eval` sections are the stage configs' own fields (`CaptureConfig`, `TrainConfig`, `EvalConfig`) minus the
ones the pipeline sets (model, hooks, data, activations, out). The config is resolved into the stage configs
when it is loaded, so a typo anywhere fails before any work.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from saeforge.activations import ActivationStore, CaptureConfig, capture
from saeforge.atomic import write_text
from saeforge.errors import ConfigError
from saeforge.eval import EvalConfig, run_eval, write_eval_outputs
from saeforge.lock import one_writer
from saeforge.models.hooks import SITES
from saeforge.report.card import write_sae_card
from saeforge.report.evaluation import evaluation_section_html
from saeforge.report.html import ContextExample, LatentContexts, SAEReport, render_report
from saeforge.run_config import (  # noqa: F401  (RunConfig, ConfigError: the pipeline's public names)
    BUILTIN_MODEL,
    ReportSection,
    RunConfig,
    StagePlan,
    builtin_config_path,
    check_model_path,
    read_run_config,
    resolve,
)
from saeforge.train import TrainConfig, TrainedSAE, train


def load_run_config(path: str | Path | None = None, out: str | Path | None = None) -> StagePlan:
    """Reads a run YAML (the built-in example when None), applies `out`, and resolves every stage config, the
    SAE specs checked against the model's width."""
    run = read_run_config(path, out)
    check_model_path(run.model)
    model_dir = resolve_model(run.model)
    plan = resolve(run, model_dir)
    _check_saes(run, model_dir, plan.train)
    return plan


def _check_saes(run: RunConfig, model_dir: Path, trains: dict[str, TrainConfig]) -> None:
    """Checks the SAE specs (architecture names, k against d_sae, ...) before the capture spends any time.

    Canonical hooks carry the model's hidden size, read from its config.json; for module-path hooks the width is
    known only after capture, where the trainer checks it again.
    """
    from transformers import AutoConfig

    from saeforge.train.specs import resolve_specs

    hidden = getattr(AutoConfig.from_pretrained(str(model_dir), local_files_only=True), "hidden_size", None)
    for hook, cfg in trains.items():
        if hidden is not None and re.fullmatch(rf"layers\.\d+\.({'|'.join(SITES)})", hook):
            try:
                resolve_specs(cfg, hidden, f"hook {hook} of {model_dir}")
            except ValueError as e:
                raise ConfigError(f"train.{e}") from e


def resolve_model(model: str) -> Path:
    """'builtin' -> the demo MiniLM (sha256-checked); anything else must be a local directory."""
    from saeforge.models import builtin_example_model

    return builtin_example_model() if model == BUILTIN_MODEL else check_model_path(model)


class Progress:
    """What the pipeline tells its caller while it works (the CLI draws bars; the default says nothing)."""

    def stage(self, name: str, total: float | None = None) -> None:
        """A new stage begins; `total` is its amount of work (tokens, steps), if known."""

    def advance(self, done: float, info: str = "") -> None:
        """Absolute progress inside the current stage."""

    def note(self, text: str) -> None:
        """A line worth showing."""


@dataclass
class RunResult:
    out: Path
    report: Path
    metrics: list[dict[str, Any]]
    seconds: float


def _capture(cfg: CaptureConfig, label: str, progress: Progress) -> dict[str, Path]:
    progress.stage(f"capture {label}", total=cfg.tokens)
    return capture(cfg, progress=lambda done, total: progress.advance(done))


def _train(cfg: TrainConfig, hook: str, progress: Progress) -> list[TrainedSAE]:
    progress.stage(f"train {hook}", total=cfg.tokens)

    def on_step(ev) -> None:
        info = ""
        if ev.metrics:
            name, m = next(iter(ev.metrics.items()))
            if m:
                fvu = "n/a" if m.get("fvu") is None else f"{m['fvu']:.3f}"
                info = f"{name}: fvu {fvu} l0 {m.get('l0', float('nan')):.1f}"
        progress.advance(ev.tokens, info)

    return train(cfg, progress=on_step)


def _sample_latents(density, n: int, seed: int) -> list[int]:
    import numpy as np

    alive = np.flatnonzero(np.asarray(density) > 0)
    if len(alive) == 0 or n == 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(alive, size=min(n, len(alive)), replace=False).tolist())


def _latent_contexts(
    sae, store: ActivationStore, density, cfg: ReportSection, tokenizer
) -> list[LatentContexts]:
    from saeforge.interpret.source import store_top_contexts

    ids = _sample_latents(density, cfg.latents, cfg.seed)
    if not ids:
        return []
    records = store_top_contexts(sae, store, ids, cfg.contexts_per_latent, tokenizer=tokenizer, n_negatives=0)
    latents = []
    for rec in records:
        examples = [
            ContextExample(tokens=c.tokens, acts=[a or 0.0 for a in c.acts], max_act=c.activation)
            for c in rec.top
        ]
        latents.append(LatentContexts(latent=rec.latent, density=rec.density, examples=examples))
    return latents


def run_pipeline(plan: StagePlan, progress: Progress | None = None) -> RunResult:
    """Runs every stage of `plan`; resumable stages (capture, training) continue where a previous run stopped.
    Raises FolderInUse at once when another process is writing into the run directory."""
    with one_writer(plan.run.out, "run"):
        return _run_pipeline(plan, progress or Progress())


def _run_pipeline(plan: StagePlan, progress: Progress) -> RunResult:
    from transformers import AutoTokenizer

    t0 = time.time()
    run = plan.run
    out = Path(run.out)
    write_text(out / "config.yaml", yaml.safe_dump(json.loads(run.model_dump_json()), sort_keys=False))

    train_stores = _capture(plan.capture_train, "train", progress)
    held_stores = (
        _capture(plan.capture_heldout, "held-out", progress) if plan.capture_heldout else train_stores
    )
    if plan.capture_heldout is None:
        progress.note("no eval_data: evaluating on the training activations (not out-of-sample)")

    tokenizer = AutoTokenizer.from_pretrained(str(plan.model_dir), local_files_only=True)
    reports: list[SAEReport] = []
    all_metrics: list[dict[str, Any]] = []
    eval_sections: list[str] = []
    for hook in run.hooks:
        cfg = plan.train[hook]
        if cfg.input_paths != [train_stores[hook]]:
            cfg = cfg.model_copy(update={"activations": [train_stores[hook]]})
        trained = _train(cfg, hook, progress)

        progress.stage(f"evaluate {hook}", total=None)
        eval_cfg = EvalConfig(
            saes=[t.path for t in trained],
            activations=held_stores[hook],
            model=plan.model_dir,
            data=run.eval_data,
            **run.eval,
        )
        results = run_eval(eval_cfg, progress=lambda line: progress.advance(0, line))
        write_eval_outputs(results, out / "eval" / hook)
        for t, r in zip(trained, results, strict=True):
            shutil.copyfile(out / "eval" / hook / r["name"] / "metrics.json", t.path / "metrics.json")
            write_sae_card(t.path)
        eval_sections.append(evaluation_section_html(results))

        progress.stage(f"interpret {hook}", total=None)
        store = ActivationStore.open(held_stores[hook])
        for t, r in zip(trained, results, strict=True):
            density = r.get("latent_density")
            latents = (
                _latent_contexts(t.sae, store, density, run.report, tokenizer) if density is not None else []
            )
            metrics = {k: v for k, v in r.items() if k != "latent_density"}
            all_metrics.append(metrics)
            reports.append(
                SAEReport(
                    name=t.name,
                    hook=hook,
                    sae_dir=str(t.path),
                    metrics=metrics,
                    history=t.history,
                    density=density,
                    latents=latents,
                    activations=str(held_stores[hook]),
                )
            )

    facts = {
        "model": run.model if run.model != BUILTIN_MODEL else f"builtin MiniLM ({plan.model_dir})",
        "hooks": ", ".join(run.hooks),
        "training corpus": json.dumps(run.data) if not isinstance(run.data, str) else run.data,
        "held-out corpus": run.eval_data or "(none: training activations)",
        "training tokens": plan.train[run.hooks[0]].tokens,
        "wall time (s)": round(time.time() - t0, 1),
    }
    html = render_report(
        reports, title=f"saeforge run: {out.name}", facts=facts, extra_sections=eval_sections
    )
    report = out / "report.html"
    write_text(report, html)
    return RunResult(out=out, report=report, metrics=all_metrics, seconds=time.time() - t0)
