"""`saeforge export neuronpedia|delphi`: an SAE and its activations in the formats those tools read."""

from __future__ import annotations

from pathlib import Path

import typer

from saeforge.cli.app import app

export_app = typer.Typer(
    help="Export an SAE with its activations for Neuronpedia or Delphi (formats: docs/interop.md).",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")

_SAE = typer.Option(..., "--sae", help="SAE directory (cfg.json + sae_weights.safetensors).")
_STORE = typer.Option(
    ...,
    "--activations",
    help="Activation store at the SAE's hook, with token ids and positions (saeforge capture).",
)


def _open(sae: Path, activations: Path):
    from saeforge.activations import ActivationStore
    from saeforge.sae import load_sae

    try:
        return load_sae(sae), ActivationStore.open(activations)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@export_app.command("delphi")
def delphi(
    sae: Path = _SAE,
    activations: Path = _STORE,
    out: Path = typer.Option(..., "--out", help="Cache directory; the files go to OUT/<hook>/."),
    n_splits: int = typer.Option(
        5, "--n-splits", help="Latent ranges, one safetensors file each (Delphi's)."
    ),
    model_name: str = typer.Option(
        None, "--model-name", help="model_name in config.json (default: the store's)."
    ),
) -> None:
    """Write Delphi's latent cache (locations, activations, tokens per latent range) for its explainers/scorers."""
    from saeforge.export import export_delphi

    sae_obj, store = _open(sae, activations)
    try:
        folder = export_delphi(sae_obj, store, out, n_splits=n_splits, model_name=model_name)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"delphi cache: {folder}")


@export_app.command("neuronpedia")
def neuronpedia(
    sae: Path = _SAE,
    activations: Path = _STORE,
    out: Path = typer.Option(
        ...,
        "--out",
        help="Export directory: features/, activations/, explanations/ and source, sourceset, model, release tables.",
    ),
    model_id: str = typer.Option(..., "--model-id", help="Neuronpedia's id of the model, e.g. gpt2-small."),
    source_id: str = typer.Option(
        ..., "--source-id", help="Neuronpedia's id of this SAE: <layer>-<set>, e.g. 6-res-team."
    ),
    model: Path = typer.Option(
        None, "--model", help="Local model directory whose tokenizer spells the tokens."
    ),
    interpretation: Path = typer.Option(
        None, "--interpretation", help="latents.json of `saeforge interpret` (explanations from its judge)."
    ),
    contexts_per_latent: int = typer.Option(
        10, "--contexts-per-latent", help="Top contexts kept per latent."
    ),
) -> None:
    """Write Neuronpedia's export tables (features, activations, explanations) as gzipped JSON-lines batches."""
    from saeforge.export import export_neuronpedia
    from saeforge.export.neuronpedia import SOURCE_ID

    if not SOURCE_ID.match(source_id):
        typer.echo(
            f"error: --source-id {source_id!r} is not <layer>-<set name>: use e.g. 6-res-team", err=True
        )
        raise typer.Exit(2)
    sae_obj, store = _open(sae, activations)
    decode, interp = None, None
    if model is not None:
        from transformers import AutoTokenizer

        from saeforge.interpret.contexts import tokenizer_decode

        decode = tokenizer_decode(AutoTokenizer.from_pretrained(model, local_files_only=True))
    if interpretation is not None:
        from saeforge.interpret.records import load_interpretation

        interp = load_interpretation(interpretation)
    try:
        root = export_neuronpedia(
            sae_obj, store, out, model_id, source_id, decode=decode, interpretation=interp,
            contexts_per_latent=contexts_per_latent,
        )  # fmt: skip
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"neuronpedia export: {root}")
