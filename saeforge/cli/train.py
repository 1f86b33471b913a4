"""`saeforge train`: train one SAE from flags, or a sweep from a YAML config."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from saeforge.cli import app

HELP = "\n\n".join(
    [
        "Train SAEs on an activation store.",
        "Either give CONFIG.yaml (keys: activations, tokens, batch_size, out, saes: a list of {name, architecture, "
        "k | sparsity_coefficient | target_l0, expansion_factor | d_sae, lr, seed, ...}, plus the training options "
        "of docs/training.md), or describe one SAE with flags (--activations, --architecture, --out, ...). "
        "With CONFIG, only --out, --resume and --device may be given as flags.",
        "Writes OUT/<name>/ (cfg.json + sae_weights.safetensors) per SAE, OUT/metrics.jsonl, OUT/curves.png, "
        "OUT/run_card.json and OUT/checkpoints/. SIGTERM or Ctrl-C saves a checkpoint and exits; rerun the same "
        "command with --resume to continue.",
        "Data parallel: torchrun --nproc_per_node N -m saeforge train ...",
    ]
)


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


class _Display:
    """A rich progress bar (tokens, tokens/s) over a table of each SAE's latest metrics."""

    def __init__(self) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens  {task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = None
        self.metrics: dict[str, dict[str, float]] = {}
        self._group = Group
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)

    def _table(self):
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        terms = sorted({k for m in self.metrics.values() for k in m if k.startswith("loss_")})
        for col in ["SAE", "loss", *(t.removeprefix("loss_") for t in terms), "L0", "FVU", "dead %", "lr"]:
            table.add_column(col, justify="left" if col == "SAE" else "right")
        for name, m in self.metrics.items():
            table.add_row(
                name,
                f"{m['loss']:.4g}",
                *(f"{m.get(t, float('nan')):.4g}" for t in terms),
                f"{m['l0']:.1f}",
                f"{m['fvu']:.4f}",
                f"{100 * m['dead_fraction']:.1f}",
                f"{m['lr']:.2e}",
            )
        return table

    def _render(self):
        return self._group(self.progress, self._table())

    def __call__(self, event) -> None:
        if self.task is None:
            label = f"train (resumed at step {event.start_step})" if event.start_step else "train"
            self.task = self.progress.add_task(label, total=event.total_tokens, rate="")
            self.live.start()
        self.progress.update(
            self.task,
            completed=event.tokens,
            rate=f"{event.tokens_per_s:,.0f}/s" if event.tokens_per_s else "",
        )
        if event.metrics:
            self.metrics = event.metrics
        self.live.update(self._render())


@app.command("train", help=HELP, no_args_is_help=True)
def train_command(
    config: Path | None = typer.Argument(
        None, help="YAML file describing the run (a sweep of one or more SAEs); omit to use the flags below."
    ),
    activations: Path | None = typer.Option(
        None, "--activations", help="Activation store directory written by `saeforge capture`."
    ),
    architecture: str | None = typer.Option(
        None,
        "--architecture",
        help="SAE architecture: topk, batchtopk, matryoshka, jumprelu, gated, standard.",
    ),
    k: int | None = typer.Option(None, "--k", help="Active latents per token (TopK family)."),
    expansion_factor: float | None = typer.Option(
        None, "--expansion-factor", help="d_sae = F * d_in (default 16). Give this or --d-sae."
    ),
    d_sae: int | None = typer.Option(
        None, "--d-sae", help="Number of latents. Give this or --expansion-factor."
    ),
    sparsity_coefficient: float | None = typer.Option(
        None,
        "--sparsity-coefficient",
        help="Penalty weight for jumprelu, gated and standard (or --target-l0).",
    ),
    target_l0: float | None = typer.Option(
        None,
        "--target-l0",
        help="Target L0 for the penalty architectures, instead of --sparsity-coefficient.",
    ),
    tokens: int | None = typer.Option(
        None,
        "--tokens",
        help="Training tokens (activation rows, default 10,000,000); steps = tokens // batch size.",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Global batch size in tokens, split over data-parallel ranks (default 4096).",
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Peak learning rate (default: the architecture's, see docs/training.md)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of the initialisation and of the data order (default 0)."
    ),
    checkpoint_every: int | None = typer.Option(
        None,
        "--checkpoint-every",
        help="Save a checkpoint every STEPS steps (also on SIGTERM/SIGINT and at the end).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the latest checkpoint in OUT/checkpoints."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run directory (required without CONFIG)."),
    no_verify: bool = typer.Option(
        False,
        "--no-verify",
        help="Load a store whose manifest lists no sha256 (another tool's) unverified; the run card says so.",
    ),
    name: str | None = typer.Option(
        None, "--name", help="Name of the SAE's folder under OUT (default: architecture)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (default auto)."),
    logger: list[str] | None = typer.Option(
        None,
        "--logger",
        help="Extra metric sink: tensorboard, mlflow or wandb (repeatable); JSONL is always on.",
    ),
) -> None:
    from saeforge.lock import FolderInUse
    from saeforge.train import ConfigError, NonFiniteError, TrainConfig, TrainingInterrupted, train

    flags = {
        "--activations": activations,
        "--tokens": tokens,
        "--batch-size": batch_size,
        "--seed": seed,
        "--architecture": architecture,
        "--k": k,
        "--expansion-factor": expansion_factor,
        "--d-sae": d_sae,
        "--sparsity-coefficient": sparsity_coefficient,
        "--target-l0": target_l0,
        "--lr": lr,
        "--checkpoint-every": checkpoint_every,
        "--name": name,
        "--logger": logger,
        "--no-verify": no_verify or None,
    }
    try:
        if config is not None:
            given = [f for f, v in flags.items() if v is not None]
            if given:
                raise ConfigError(
                    f"{', '.join(given)} cannot be combined with CONFIG; set them in {config} "
                    "(only --out, --resume and --device may override the file)"
                )
            cfg = TrainConfig.from_yaml(config, out=out, resume=resume or None, device=device)
        else:
            missing = [
                f
                for f, v in (("--activations", activations), ("--architecture", architecture), ("--out", out))
                if v is None
            ]
            if missing:
                raise ConfigError(f"missing {', '.join(missing)} (or give a CONFIG.yaml)")
            spec = {
                "name": name or architecture,
                "architecture": architecture,
                "k": k,
                "expansion_factor": expansion_factor,
                "d_sae": d_sae,
                "sparsity_coefficient": sparsity_coefficient,
                "target_l0": target_l0,
                "lr": lr,
                "seed": 0 if seed is None else seed,
            }
            data = {
                "activations": activations,
                "verify": not no_verify,
                "tokens": 10_000_000 if tokens is None else tokens,
                "batch_size": 4096 if batch_size is None else batch_size,
                "out": out,
                "seed": 0 if seed is None else seed,
                "resume": resume,
                "checkpoint_every": checkpoint_every,
                "saes": [{k_: v for k_, v in spec.items() if v is not None}],
                "loggers": ["jsonl", *(logger or [])],
            }
            if device:
                data["device"] = device
            cfg = TrainConfig.parse(data, source="flags")
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    display = _Display() if _is_main_rank() else None
    try:
        results = train(cfg, progress=display)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except (NonFiniteError, FolderInUse) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except TrainingInterrupted as e:
        if _is_main_rank():
            typer.echo(str(e), err=True)
        raise typer.Exit(128 + e.signum) from None
    finally:
        if display is not None:
            display.live.stop()

    if not _is_main_rank():
        return
    for r in results:
        m = r.metrics
        typer.echo(
            f"{r.name}: FVU {m.get('fvu', float('nan')):.4f}  L0 {m.get('l0', float('nan')):.1f}  "
            f"dead {100 * m.get('dead_fraction', float('nan')):.1f}%  -> {r.path}"
        )
    typer.echo(f"metrics: {cfg.out / 'metrics.jsonl'}  curves: {cfg.out / 'curves.png'}")
    sys.stdout.flush()
