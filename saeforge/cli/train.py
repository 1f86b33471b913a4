"""`saeforge train`: train one SAE from flags, or a sweep from a YAML config."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer

from saeforge.cli import checks
from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, duration, exit_codes
from saeforge.errors import ConfigError
from saeforge.train.config import SAESpec, TrainConfig

HELP = "\n\n".join(
    [
        "Train SAEs on an activation store (transcoders: --target-activations; crosscoders: several "
        "--activations and --crosscoder).",
        "Either give CONFIG.yaml (keys: activations, tokens, batch_size, out, saes: a list of {name, architecture, "
        "k | sparsity_coefficient | target_l0, expansion_factor | d_sae, lr, seed, ...}, plus the training options "
        "of docs/training.md), or describe one SAE with flags (--activations, --architecture, --out, ...). "
        "With CONFIG, only --out, --resume, --device and --tensor-parallel may be given as flags.",
        "Writes OUT/<name>/ (cfg.json + sae_weights.safetensors) per SAE, OUT/metrics.jsonl, OUT/curves.png, "
        "OUT/run_card.json and OUT/checkpoints/. SIGTERM or Ctrl-C saves a checkpoint and exits; rerun the same "
        "command with --resume to continue.",
        "Data parallel: torchrun --nproc_per_node N -m saeforge train ...; latent-sharded: add "
        "--tensor-parallel T (N = T x D: each SAE's latents split over T ranks, the batch over D); with "
        "distribute_hooks: true in CONFIG (one store per hook in activations) each rank trains the saes of its "
        "hooks instead.",
    ]
)


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


class _Display:
    """Training progress on stderr. In a terminal: a live bar (tokens, tokens/s) over a table of each SAE's
    latest metrics. Elsewhere (a log, a pipe): plain lines at the first record and each tenth of the run.
    A context manager: the live display is stopped before anything is printed after it."""

    COLUMNS = ("L0", "FVU", "dead %", "lr")

    def __init__(self) -> None:
        from saeforge.cli.output import make_console

        self.console = make_console(stderr=True)
        self.live = None
        self.progress = None
        self.task = None
        self.metrics: dict[str, dict[str, float]] = {}
        self._next_tenth = 0

    def __enter__(self) -> _Display:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    @staticmethod
    def _cells(m: dict[str, float], terms: list[str]) -> list[str]:
        return [
            f"{m['loss']:.4g}",
            *(f"{m.get(t, float('nan')):.4g}" for t in terms),
            f"{m['l0']:.1f}",
            "n/a" if m.get("fvu") is None else f"{m['fvu']:.4f}",
            f"{100 * m['dead_fraction']:.1f}",
            f"{m['lr']:.2e}",
        ]

    def _terms(self) -> list[str]:
        return sorted({k for m in self.metrics.values() for k in m if k.startswith("loss_")})

    def _table(self):
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        terms = self._terms()
        for col in ["SAE", "loss", *(t.removeprefix("loss_") for t in terms), *self.COLUMNS]:
            table.add_column(col, justify="left" if col == "SAE" else "right", no_wrap=True)
        for name, m in self.metrics.items():
            table.add_row(name, *self._cells(m, terms))
        return table

    def _start_live(self, label: str, total: int) -> None:
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens  {task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task(label, total=total, rate="")
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def _plain(self, event, label: str) -> None:
        """One progress line, then one line per SAE (every metric named), when a record crosses a tenth."""
        done = event.tokens / max(event.total_tokens, 1)
        if not event.metrics or (done * 10 < self._next_tenth and event.step != event.total_steps):
            return
        self._next_tenth = int(done * 10) + 1
        rate = f"  {event.tokens_per_s:,.0f} tokens/s" if event.tokens_per_s else ""
        lines = [f"{label}: step {event.step}/{event.total_steps}  {event.tokens}/{event.total_tokens} "
                 f"tokens ({done:.0%}){rate}"]  # fmt: skip
        terms = self._terms()
        names = ["loss", *(t.removeprefix("loss_") for t in terms), *self.COLUMNS]
        for name, m in self.metrics.items():
            pairs = "  ".join(f"{k} {v}" for k, v in zip(names, self._cells(m, terms), strict=True))
            lines.append(f"  {name}: {pairs}")
        for line in lines:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, event) -> None:
        label = f"train (resumed at step {event.start_step})" if event.start_step else "train"
        if event.metrics:
            self.metrics = event.metrics
        if not self.console.is_terminal:
            self._plain(event, label)
            return
        if self.live is None:
            self._start_live(label, event.total_tokens)
        rate = f"{event.tokens_per_s:,.0f}/s" if event.tokens_per_s else ""
        self.progress.update(self.task, completed=event.tokens, rate=rate)
        from rich.console import Group

        self.live.update(Group(self.progress, self._table()))


# Fields of a run given as flags (the one SAE's own come from SAESpec); --logger adds sinks to jsonl.
_RUN_FLAGS = [
    "activations",
    "target_activations",
    "crosscoder",
    "tokens",
    "epochs",
    "batch_size",
    "seed",
    "checkpoint_every",
    "resume",
    "out",
    "device",
    "loggers",
    "verify",
    "tensor_parallel",
]
_SAE_FLAGS = [
    "architecture",
    "k",
    "expansion_factor",
    "d_sae",
    "sparsity_coefficient",
    "target_l0",
    "lr",
    "name",
    "skip_connection",
]
# The flags that may override a CONFIG file (a resumed run may change its device and its rank layout).
_FILE_OVERRIDES = {"out", "resume", "device", "tensor_parallel"}


@app.command("train", help=HELP, no_args_is_help=True)
@config_options(
    TrainConfig,
    fields=_RUN_FLAGS,
    flags={"loggers": "--logger"},
    unset=True,
)
@config_options(SAESpec, fields=_SAE_FLAGS, unset=True, into="spec")
def train_command(
    settings: Settings,
    spec: Settings,
    config: Path | None = typer.Argument(
        None, help="YAML file describing the run (a sweep of one or more SAEs); omit to use the flags below."
    ),
) -> None:
    with exit_codes():
        cfg = _config(config, settings, spec)
        rows, d_in = _check_files(cfg)
        cfg = cfg.with_tokens(rows)
        if _is_main_rank() and rows and d_in:
            _say_how_long(cfg, d_in, rows)  # resolves the SAE specs: their errors exit 2 like the others
    from saeforge.lock import FolderInUse
    from saeforge.train import NonFiniteError, TrainingInterrupted, train, train_hooks

    display = _Display() if _is_main_rank() else None
    per_hook = None
    try:
        # The display is stopped (its last frame drawn) before an error or the interruption is printed.
        with exit_codes(failed=(NonFiniteError, FolderInUse)), display or contextlib.nullcontext():
            if cfg.distribute_hooks:
                per_hook = train_hooks(cfg, progress=display)
            else:
                results = train(cfg, progress=display)
    except TrainingInterrupted as e:
        if _is_main_rank():
            typer.echo(str(e), err=True)
        raise typer.Exit(128 + e.signum) from None

    if per_hook is not None:  # every rank reports the hooks it trained
        for hook, results in per_hook.items():
            typer.echo(f"{hook} (rank {os.environ.get('RANK', '0')}):")
            _report(results)
        return
    if not _is_main_rank():
        return
    _report(results)
    typer.echo(f"metrics: {cfg.out / 'metrics.jsonl'}  curves: {cfg.out / 'curves.png'}")
    sys.stdout.flush()


def _report(results) -> None:
    for r in results:
        m = r.metrics
        fvu = "n/a" if m.get("fvu") is None else f"{m['fvu']:.4f}"
        typer.echo(
            f"{r.name}: FVU {fvu}  L0 {m.get('l0', float('nan')):.1f}  "
            f"dead {100 * m.get('dead_fraction', float('nan')):.1f}%  -> {r.path}"
        )
    sys.stdout.flush()


def _config(config: Path | None, settings: Settings, spec: Settings) -> TrainConfig:
    """The run from CONFIG (with --out, --resume, --device overrides) or from the flags of one SAE."""
    if config is not None:
        given = [settings.flag(f) for f in settings.given() if f not in _FILE_OVERRIDES]
        given += [spec.flag(f) for f in spec.given()]
        if given:
            raise ConfigError(
                f"{', '.join(given)} cannot be combined with CONFIG; set them in {config} "
                "(only --out, --resume, --device and --tensor-parallel may override the file)"
            )
        return TrainConfig.from_yaml(config, **{k: settings.values[k] for k in _FILE_OVERRIDES})
    missing = [
        f for f in ("--activations", "--architecture", "--out") if _flag_value(f, settings, spec) is None
    ]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (or give a CONFIG.yaml)")
    seed = settings.values["seed"]
    one = spec.given() | {"name": spec.values["name"] or spec.values["architecture"], "seed": seed or 0}
    return settings.build(
        saes=[one],
        loggers=["jsonl", *(settings.values["loggers"] or [])],
        resume=bool(settings.values["resume"]),
    )


def _check_files(cfg: TrainConfig) -> tuple[int | None, int | None]:
    """The stores exist and every SAE's d_in (when given) is the input store's (before torch loads).
    Returns the rows of the (smallest) input store and the summed input width, None where unknown."""
    manifests = [checks.store_manifest(p) for p in cfg.input_paths]
    if cfg.target_activations is not None:
        checks.store_manifest(cfg.target_activations, "--target-activations")
    # A damaged manifest is named by the store's own reader when training opens it; here it only gives no figure.
    rows = [sum(r for s in m.get("shards", []) if isinstance(r := s.get("rows", 0), int)) for m in manifests]
    widths = [w if isinstance(w := m.get("d_in"), int) else None for m in manifests]
    if not cfg.crosscoder and widths and widths[0] is not None:
        for i, s in enumerate(cfg.saes):
            s.check_d_in(widths[0], f"saes[{i}] ({s.name})", str(cfg.input_paths[0]))
    d_in = sum(widths) if widths and None not in widths else None
    return (min(rows) if rows else None), d_in


# More passes than this over the same rows and training warns: the SAEs would learn this sample, not the model.
_MANY_PASSES = 4


def _say_how_long(cfg: TrainConfig, d_in: int, rows: int) -> None:
    """One line before training: tokens, steps, passes over the store and the estimated time; a warning when
    the run reads each row more than a few times."""
    from saeforge.plan import estimate_training

    e = estimate_training(cfg, d_in, rows)
    typer.echo(
        f"training {e.tokens:,} tokens: {e.steps:,} steps of {cfg.batch_size:,}, {e.passes:.2g} passes over the "
        f"{rows:,} rows of {cfg.input_paths[0]}; about {duration(e.seconds)} (from a warm-up of a few steps of "
        "these SAEs timed just now)"
    )
    if e.passes > _MANY_PASSES:
        typer.echo(
            f"warning: the run reads each of the {rows:,} rows {e.passes:.0f} times; SAEs trained that long on "
            "one sample learn the sample. Capture more tokens, or lower --tokens (or --epochs).",
            err=True,
        )


def _flag_value(flag: str, *settings: Settings):
    field = flag.removeprefix("--").replace("-", "_")
    return next((s.values[field] for s in settings if field in s.values), None)
