"""Checks of the files a command names, run before torch or transformers load, so a wrong path, a hub id, an
empty or undecodable corpus or an SAE that does not fit its store fails in well under a second.

They read only JSON and text: a model's config.json and tokenizer.json, a store's manifest.json, an SAE's
cfg.json. Each raises ConfigError (exit code 2, `saeforge.errors`) naming the file and the fix; the stages
check the same things again when they load the files, so these are the fast path, not the only guard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from saeforge.errors import ConfigError


def model_dir(path: str | Path, flag: str = "--model") -> Path:
    """`path` as a local model directory (config.json inside); ConfigError otherwise (a hub id names the fix)."""
    from saeforge.models.paths import ModelLoadError, check_model_dir

    try:
        return check_model_dir(path)
    except ModelLoadError as e:
        raise ConfigError(f"{flag}: {e}") from None


def corpora(sources: Iterable[str], flag: str = "--data") -> None:
    """Every text SOURCE exists, decodes and holds at least one document."""
    from saeforge.text.sources import SourceError, check_source

    for source in sources:
        try:
            check_source(source)
        except SourceError as e:
            raise ConfigError(f"{flag}: {e}") from None


def store_manifest(path: str | Path, flag: str = "--activations") -> dict:
    """The manifest.json of the store at `path` (or of the one store inside it, as capture writes OUT/<hook>)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"{flag}: activation store {path} does not exist; run `saeforge capture ... --out {path.parent}`"
        )
    found = [path] if (path / "manifest.json").is_file() else []
    if not found and path.is_dir():
        found = sorted(p for p in path.iterdir() if (p / "manifest.json").is_file())
    if len(found) != 1:
        what = "holds no manifest.json" if not found else f"holds {len(found)} stores (one per hook)"
        raise ConfigError(f"{flag}: {path} {what}: give the directory of one store (OUT/<hook>)")
    return _json(found[0] / "manifest.json", flag)


def sae_cfg(path: str | Path, flag: str = "--sae") -> dict:
    """The cfg.json of the SAE directory `path`."""
    path = Path(path)
    if not (path / "cfg.json").is_file():
        what = "does not exist" if not path.exists() else "has no cfg.json"
        raise ConfigError(f"{flag}: SAE directory {path} {what}; give a folder `saeforge train` wrote")
    return _json(path / "cfg.json", flag)


def sae_fits_store(sae: str | Path, store: str | Path, sae_flag: str = "--sae") -> None:
    """The SAE's d_in equals the store's (single-site SAEs and transcoders; a crosscoder is checked on load)."""
    cfg, manifest = sae_cfg(sae, sae_flag), store_manifest(store)
    d_in, width = cfg.get("d_in"), manifest.get("d_in")
    if "n_sites" in cfg or d_in is None or width is None or d_in == width:
        return
    raise ConfigError(
        f"SAE {sae} has d_in {d_in} but the activation store {store} holds activations of d_in {width}: "
        "use the store captured at the hook the SAE was trained on"
    )


def single_token(model: Path, target: str, flag: str = "--target") -> None:
    """`target` is one token of the model's tokenizer (checked when the model has a tokenizer.json)."""
    from saeforge.interpret.config import target_token_id
    from saeforge.models.paths import FastTokenizer

    tokenizer = FastTokenizer.of(model)
    if tokenizer is not None:
        try:
            target_token_id(tokenizer, target)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _json(path: Path, flag: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{flag}: {path} is not readable JSON ({e}); the file is damaged") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag}: {path} must hold a JSON object")
    return data
