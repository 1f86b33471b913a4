"""`saeforge features build|search`: the SQLite feature index (latent, density, explanation, scores, tokens)."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli.app import app

features_app = typer.Typer(
    help="Build and search the feature index (SQLite, full-text search on explanations).",
    no_args_is_help=True,
)
app.add_typer(features_app, name="features")


@features_app.command("build")
def build(
    source: Path = typer.Option(
        ..., "--from", help="Output directory of `saeforge interpret` (or its latents.json)."
    ),
    index: Path = typer.Option(None, "--index", help="Index directory (default: the --from directory)."),
) -> None:
    """Build DIR/features.sqlite from latents.json (interpret already builds one in its --out)."""
    from saeforge.interpret.index import build_index
    from saeforge.interpret.records import load_interpretation

    try:
        interp = load_interpretation(source)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    target = index or (source if source.is_dir() else source.parent)
    path = build_index(interp.latents, target)
    typer.echo(f"indexed {len(interp.latents)} latents in {path}")


@features_app.command("search")
def search(
    query: str = typer.Argument(..., help="Words to find in explanations (and top tokens); all must match."),
    index: Path = typer.Option(..., "--index", help="Index directory (holds features.sqlite) or the file."),
    limit: int = typer.Option(20, "--limit", help="Most results shown."),
) -> None:
    """Find latents by explanation text, best match first."""
    from rich.console import Console
    from rich.table import Table

    from saeforge.interpret.index import search as run_search

    try:
        hits = run_search(index, query, limit)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not hits:
        typer.echo(f"no latent matches {query!r}")
        raise typer.Exit(1)
    table = Table("latent", "density", "explanation", "bal. acc.", "top tokens")
    for h in hits:
        acc = "–" if h.balanced_accuracy is None else f"{h.balanced_accuracy:.2f}"
        table.add_row(str(h.latent), f"{h.density:.3%}", h.explanation or "", acc, h.top_tokens)
    Console(width=140).print(table)
