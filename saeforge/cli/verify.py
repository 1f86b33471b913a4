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
    seal: bool = typer.Option(
        False,
        "--seal",
        help="After a clean check, add total_rows and shards_digest to a manifest that has none (format "
        "version 1 or another tool's), so later edits of its shard list are detected.",
    ),
) -> None:
    """Check the manifest (shard paths inside the store, total_rows, shards_digest) and every shard's size,
    header and sha256 against it; exit 1 naming each problem."""
    from saeforge.activations.manifest import MANIFEST, Manifest, ManifestError
    from saeforge.activations.store import find_stores, verify_shards
    from saeforge.cli.options import exit_codes

    stores = find_stores(path)
    if not stores:
        typer.echo(f"error: {path} holds no {MANIFEST}: not an activation store or capture output", err=True)
        raise typer.Exit(2)
    failed = 0
    for store in stores:
        with exit_codes(failed=(ManifestError,)):
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
            _notes(store, manifest, seal)
    if failed:
        typer.echo(
            f"{failed} bad shard(s): recapture them (delete the store and rerun capture) or restore them.",
            err=True,
        )
        raise typer.Exit(1)


def _notes(store: Path, manifest, seal: bool) -> None:
    """Prints what a clean check cannot vouch for (no digest, unlisted shard files); seals when asked."""
    listed = {s.path for s in manifest.shards}
    unlisted = sorted(p.name for p in store.glob("*.safetensors") if p.name not in listed)
    if unlisted:
        typer.echo(f"  note: {len(unlisted)} shard file(s) not in the manifest (first: {unlisted[0]})")
    if manifest.shards_digest is not None:
        return
    if seal and manifest.complete and all(s.sha256 for s in manifest.shards):
        from saeforge.activations.manifest import MANIFEST
        from saeforge.cli.options import writing

        with writing(store, "verify --seal"):
            manifest.write(store / MANIFEST)
        typer.echo(
            f"  sealed: total_rows {manifest.num_rows} and shards_digest written to {store / MANIFEST}"
        )
    elif seal:
        typer.echo("  note: not sealed: the capture is incomplete or some shards list no sha256", err=True)
    else:
        typer.echo(
            "  note: no shards_digest (format version < 2): a deleted, duplicated or reordered shard entry "
            "cannot be detected; `saeforge verify --seal` adds it"
        )
