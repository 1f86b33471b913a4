"""`saeforge serve` (an OpenAI-compatible server with steering and an audit log) and `saeforge audit`."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli import app

audit_app = typer.Typer(help="Verify and summarise a `saeforge serve` audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _opt(field: str, *flags: str):
    """A typer option whose default and help are ServeConfig's, so `--help` and the config cannot drift."""
    from saeforge.serve.config import ServeConfig

    info = ServeConfig.model_fields[field]
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if isinstance(default, (list, Path)):
        default = None
    return typer.Option(default, *(flags or ("--" + field.replace("_", "-"),)), help=info.description)


@app.command()
def serve(
    run_dir: Path = typer.Argument(
        None, help="A `saeforge run` folder: model, SAEs and feature indexes from it."
    ),
    model: Path = _opt("model"),
    model_name: str = _opt("model_name"),
    sae: list[Path] = _opt("sae"),
    index: list[str] = _opt("index"),
    variants: Path = _opt("variants"),
    host: str = _opt("host"),
    port: int = _opt("port"),
    api_keys: Path = _opt("api_keys"),
    insecure_no_auth: bool = _opt("insecure_no_auth"),
    audit_log: Path = typer.Option(
        None, "--audit-log", help="Audit log folder (default: RUN_DIR/audit or ./audit)."
    ),
    audit_text: str = _opt("audit_text"),
    audit_features: int = _opt("audit_features"),
    audit_max_bytes: int = _opt("audit_max_bytes"),
    audit_max_delay_ms: float = _opt("audit_max_delay_ms"),
    device: str = _opt("device"),
    dtype: str = _opt("dtype"),
    max_batch_size: int = _opt("max_batch_size"),
    max_body_bytes: int = _opt("max_body_bytes"),
    max_prompt_tokens: int = _opt("max_prompt_tokens"),
    max_tokens: int = _opt("max_tokens"),
    max_coefficient: float = _opt("max_coefficient"),
    max_concurrency: int = _opt("max_concurrency"),
    max_n: int = _opt("max_n"),
    shutdown_timeout: float = _opt("shutdown_timeout"),
) -> None:
    """Serve a local model behind the OpenAI API, steered and read through SAEs, with a per-request audit log.

    Requests may carry {"saeforge": {"steer": [...], "clamp": [...], "return_features": {"top": 10}}}; a
    --variants file names edits served as their own model ids (MODEL:NAME). Every request is recorded in the
    hash-chained audit log before its response completes (`saeforge audit verify`). See docs/serving.md.
    """
    settings = {k: v for k, v in locals().items() if k != "run_dir" and v not in (None, [])}
    from pydantic import ValidationError

    from saeforge.serve.config import ServeConfig
    from saeforge.serve.server import build_state, from_run_dir
    from saeforge.serve.server import serve as run_server

    if run_dir is not None:
        if model is not None or sae:
            _fail("give RUN_DIR or --model/--sae, not both")
        try:
            settings = {**from_run_dir(run_dir), **settings}
        except ValueError as e:
            _fail(str(e))
        settings.setdefault("audit_log", run_dir / "audit")
    if "model" not in settings:
        _fail("nothing to serve: give --model DIR (and --sae DIR ...), or a `saeforge run` folder")
    try:
        cfg = ServeConfig(**settings)
    except ValidationError as e:
        first = e.errors()[0]
        _fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")
    try:
        state = build_state(cfg)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))

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
        _fail(f"{log} does not exist")
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
        _fail(f"{log} does not exist")
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
