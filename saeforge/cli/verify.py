"""`saeforge verify DIR`: checks every shard of a store (or of each store in a capture output)."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli.app import app


@app.command()
def verify(
    path: Path = typer.Argument(
        ..., help="A store directory, or a capture --out directory holding one per hook."
    ),
) -> None:
    """Check every shard's size, header and sha256 against the manifest; exit 1 naming each bad shard."""
    from saeforge.activations.manifest import MANIFEST, Manifest
    from saeforge.activations.store import find_stores, verify_shards

    stores = find_stores(path)
    if not stores:
        typer.echo(f"error: {path} holds no {MANIFEST}: not an activation store or capture output", err=True)
        raise typer.Exit(2)
    failed = 0
    for store in stores:
        manifest = Manifest.read(store / MANIFEST)
        bad = verify_shards(store, manifest)
        state = "" if manifest.complete else " (incomplete capture)"
        if bad:
            failed += len(bad)
            typer.echo(f"BAD  {store}: {len(bad)} of {len(manifest.shards)} shards{state}")
            for line in bad:
                typer.echo(f"  bad shard: {line}")
        else:
            typer.echo(f"OK   {store}: {len(manifest.shards)} shards, {manifest.num_rows} rows{state}")
    if failed:
        typer.echo(
            f"{failed} bad shard(s): recapture them (delete the store and rerun capture) or restore them.",
            err=True,
        )
        raise typer.Exit(1)
