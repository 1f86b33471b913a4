"""Architectures by name. Each architecture's file registers its classes once; every list elsewhere reads from here.

    register_architecture(training=TopKTrainingSAE, inference=TopKSAE)

registers a training class (what the trainer builds, its config fragment, defaults and run-card text are its class
attributes, see `saeforge.sae.training.TrainingSAE`) under its `architecture` name, and an inference class (what is
saved and loaded, its weight names and cfg.json keys are its class attributes, see `saeforge.sae.base.SAE`) under
its own. Aliases ("relu" for "standard") name the same classes. Registration order is the order the names are
listed in messages and in `--help`. This module imports no architecture, so architectures and the base classes may
import it without a cycle; `saeforge.sae` imports every architecture module, which registers it.
"""

from __future__ import annotations

from pydantic import BaseModel

# name (and alias) -> class; filled by register_architecture, read by the trainer, load_sae and the CLI.
# Values are TrainingSAE and SAE subclasses (not imported here: they import this module).
TRAINING_ARCHITECTURES: dict[str, type] = {}
INFERENCE_ARCHITECTURES: dict[str, type] = {}
ALIASES: dict[str, str] = {}


def register_architecture(
    training: type | None = None,
    inference: type | None = None,
    aliases: tuple[str, ...] = (),
) -> None:
    """Registers a training class under `training.architecture` and an inference class under
    `inference.architecture`; each alias names both. A name registered twice is an error."""
    names = []
    if training is not None:
        names.append((TRAINING_ARCHITECTURES, training.architecture, training))
    if inference is not None:
        names.append((INFERENCE_ARCHITECTURES, inference.architecture, inference))
    for table, name, cls in names:
        if name in table:
            raise ValueError(f"architecture {name!r} is registered twice ({table[name]} and {cls})")
        table[name] = cls
        for alias in aliases:
            ALIASES[alias] = name
            table[alias] = cls


def training_names() -> tuple[str, ...]:
    """Canonical training architecture names in registration order (no aliases)."""
    return tuple(n for n in TRAINING_ARCHITECTURES if n not in ALIASES)


def inference_names() -> tuple[str, ...]:
    """Canonical inference architecture names in registration order (no aliases)."""
    return tuple(n for n in INFERENCE_ARCHITECTURES if n not in ALIASES)


def canonical_architecture(name: str, valid: tuple[str, ...] | None = None) -> str:
    """Resolves aliases ("relu" -> "standard"); an unknown name raises ValueError listing the valid ones.

    valid: the names accepted (default: the training architectures)."""
    valid = training_names() if valid is None else valid
    name = ALIASES.get(name, name)
    if name not in valid:
        aliases = ", ".join(f"{a} (= {t})" for a, t in ALIASES.items() if t in valid)
        raise ValueError(
            f"unknown SAE architecture {name!r}; valid architectures: {', '.join(valid)}"
            + (f"; aliases: {aliases}" if aliases else "")
        )
    return name


def training_class(architecture: str) -> type:
    """The training class of `architecture` (or an alias); an unknown name raises ValueError listing valid ones."""
    return TRAINING_ARCHITECTURES[canonical_architecture(architecture)]


def inference_class(architecture: str) -> type:
    """The inference class for a saved SAE's architecture; an unknown name raises ValueError listing valid ones."""
    return INFERENCE_ARCHITECTURES[canonical_architecture(architecture, inference_names())]


def fragments_of(cls: type) -> list[type[BaseModel]]:
    """The config fragments a training class reads: its own `config_fields` and its bases', base first."""
    found = [k.__dict__["config_fields"] for k in reversed(cls.__mro__) if k.__dict__.get("config_fields")]
    return list(dict.fromkeys(found))


def config_fragments() -> list[type[BaseModel]]:
    """The config fragments (pydantic models of architecture-specific fields) of every training class, each once,
    in registration order: `TrainingSAEConfig` is composed of the shared fields and these."""
    return list(dict.fromkeys(f for cls in TRAINING_ARCHITECTURES.values() for f in fragments_of(cls)))


def describe() -> str:
    """One line listing the training architectures and aliases, for help texts."""
    aliases = {t: a for a, t in ALIASES.items()}
    return ", ".join(f"{n} (alias {aliases[n]})" if n in aliases else n for n in training_names())
