"""`saeforge serve` (an OpenAI-compatible server with steering and an audit log) and `saeforge audit`."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli.app import app
from saeforge.cli.options import Settings, config_options, exit_codes, fail
from saeforge.serve.config import ServeConfig

audit_app = typer.Typer(help="Verify and summarise a `saeforge serve` audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@app.command()
@config_options(ServeConfig, unset=True)
def serve(
    settings: Settings,
    run_dir: Path = typer.Argument(
        None, help="A `saeforge run` folder: model, SAEs and feature indexes from it."
    ),
) -> None:
    """Serve a local model behind the OpenAI API, steered and read through SAEs, with a per-request audit log.

    Requests may carry {"saeforge": {"steer": [...], "clamp": [...], "return_features": {"top": 10}}}; a
    --variants file names edits served as their own model ids (MODEL:NAME). Every request is recorded in the
    hash-chained audit log before its response completes (`saeforge audit verify`). See docs/serving.md.
    """
    from pydantic import ValidationError

    from saeforge.errors import ConfigError, format_validation_error
    from saeforge.serve.server import build_state, from_run_dir
    from saeforge.serve.server import serve as run_server

    given = {k: v for k, v in settings.given().items() if v != []}
    with exit_codes():
        found = {}
        if run_dir is not None:
            if "model" in given or "sae" in given:
                fail("give RUN_DIR or --model/--sae, not both")
            found = {**from_run_dir(run_dir), "audit_log": run_dir / "audit"}
        elif "model" not in given:
            fail("nothing to serve: give --model DIR (and --sae DIR ...), or a `saeforge run` folder")
        try:  # not settings.build(): its first parameter is named `model`, as is ServeConfig's first field
            cfg = ServeConfig.model_validate({**settings.defaults, **found, **given})
        except ValidationError as e:
            raise ConfigError(
                format_validation_error(e, "options", name_of=settings.flag, model=ServeConfig)
            ) from None
        state = build_state(cfg)

    def ready(url: str) -> None:
        typer.echo(f"saeforge serve: listening on {url}")
        typer.echo(f"  models: {', '.join(state.model_ids())} ({state.backend.kind})")
        for s in state.saes.values():
            typer.echo(
                f"  sae {s.name}: {s.hook}, d_sae={s.d_sae}" + (f", index {s.index}" if s.index else "")
            )
        typer.echo(f"  audit log: {cfg.audit_log.resolve()} (text: {cfg.audit_text})")
        typer.echo(
            f"  auth: {'API keys from ' + str(cfg.api_keys) if cfg.api_keys else 'none (loopback only)'}"
        )

    run_server(cfg, state, ready)
    typer.echo("saeforge serve: stopped; audit log flushed")


@audit_app.command("verify")
def audit_verify(log: Path = typer.Argument(..., help="An --audit-log folder, or one of its files.")) -> None:
    """Check the hash chain; exit 0 only when intact, naming the first edited, deleted, reordered or truncated
    record otherwise (a record torn by a crash at the end of the newest file is a warning)."""
    from saeforge.serve.audit import verify_log

    if not log.exists():
        fail(f"{log} does not exist")
    res = verify_log(log)
    if res.warning:
        typer.echo(f"warning: {res.warning}", err=True)
    if not res.ok:
        typer.echo(f"TAMPERED {log}: {res.error}")
        raise typer.Exit(1)
    typer.echo(f"OK {log}: {res.records} records in {res.files} file(s), chain intact")


@audit_app.command("report")
def audit_report(
    log: Path = typer.Argument(..., help="An --audit-log folder, or one of its files."),
    out: Path = typer.Option(None, "--out", help="HTML file to write (default: LOG/report.html)."),
    bucket_minutes: float = typer.Option(60.0, "--bucket-minutes", help="Width of the time buckets."),
) -> None:
    """Summarise features over time, per variant and per API key: a table on the terminal and an HTML report."""
    from saeforge.atomic import write_text
    from saeforge.report.audit import render_audit_report
    from saeforge.serve.audit import read_records, verify_log
    from saeforge.serve.summary import summarise

    if not log.exists():
        fail(f"{log} does not exist")
    summary = summarise(read_records(log), bucket_minutes * 60)
    check = verify_log(log)
    out = out or (log if log.is_dir() else log.parent) / "report.html"
    write_text(out, render_audit_report(summary, str(log), check.error or "intact"))
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "group", "requests", "errors", "tokens", "top features (sae:latent mean-of-max)", title=str(log)
    )
    for g in summary.groups:
        feats = ", ".join(f"{f.sae}:{f.latent} {f.mean_max:.3g}" for f in g.features[:5])
        table.add_row(g.name, str(g.requests), str(g.errors), str(g.tokens), feats)
    Console(width=140).print(table)
    typer.echo(f"chain: {check.error or 'intact'}; wrote {out}")
