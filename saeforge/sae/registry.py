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
# Dictionary kinds beyond the plain SAE (reads and writes one site): kind name -> training mixin.
KINDS: dict[str, type] = {}
# Their inference classes (a transcoder, a crosscoder), by architecture name; load_sae reads these too.
KIND_INFERENCE: dict[str, type] = {}
_COMPOSED: dict[tuple[str, str], type] = {}


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


def register_kind(training: type, inference: tuple[type, ...] = ()) -> None:
    """Registers a dictionary kind: `training` is a mixin (a TrainingSAE subclass naming its `kind`) that turns any
    architecture's training class into that kind (`training_class(architecture, kind)` composes the two), and
    `inference` are the kind's inference classes, registered under their `architecture` names."""
    if training.kind in KINDS:
        raise ValueError(f"dictionary kind {training.kind!r} is registered twice")
    KINDS[training.kind] = training
    for cls in inference:
        if cls.architecture in KIND_INFERENCE or cls.architecture in INFERENCE_ARCHITECTURES:
            raise ValueError(f"architecture {cls.architecture!r} is registered twice")
        KIND_INFERENCE[cls.architecture] = cls


def training_names() -> tuple[str, ...]:
    """Canonical training architecture names in registration order (no aliases)."""
    return tuple(n for n in TRAINING_ARCHITECTURES if n not in ALIASES)


def inference_names() -> tuple[str, ...]:
    """Canonical inference architecture names (SAEs, then the kinds'), in registration order (no aliases)."""
    return tuple(n for n in INFERENCE_ARCHITECTURES if n not in ALIASES) + tuple(KIND_INFERENCE)


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


def training_class(architecture: str, kind: str = "sae") -> type:
    """The training class of `architecture` (or an alias) as a dictionary of `kind` ("sae", or a registered kind:
    the kind's mixin composed with the architecture's class); an unknown name raises ValueError listing valid ones."""
    base = TRAINING_ARCHITECTURES[canonical_architecture(architecture)]
    if kind == "sae":
        return base
    if kind not in KINDS:
        raise ValueError(f"unknown dictionary kind {kind!r}; valid kinds: sae, {', '.join(KINDS)}")
    key = (base.architecture, kind)
    if key not in _COMPOSED:
        mixin = KINDS[kind]
        _COMPOSED[key] = type(
            f"{mixin.__name__}[{base.__name__}]", (mixin, base), {"__module__": mixin.__module__}
        )
    return _COMPOSED[key]


def inference_class(architecture: str) -> type:
    """The inference class for a saved SAE's architecture; an unknown name raises ValueError listing valid ones."""
    name = canonical_architecture(architecture, inference_names())
    return INFERENCE_ARCHITECTURES.get(name) or KIND_INFERENCE[name]


def fragments_of(cls: type) -> list[type[BaseModel]]:
    """The config fragments a training class reads: its own `config_fields` and its bases', base first."""
    found = [k.__dict__["config_fields"] for k in reversed(cls.__mro__) if k.__dict__.get("config_fields")]
    return list(dict.fromkeys(found))


def config_fragments() -> list[type[BaseModel]]:
    """The config fragments (pydantic models of architecture- or kind-specific fields) of every training class and
    kind, each once, in registration order: `TrainingSAEConfig` is composed of the shared fields and these."""
    classes = [*TRAINING_ARCHITECTURES.values(), *KINDS.values()]
    return list(dict.fromkeys(f for cls in classes for f in fragments_of(cls)))


def describe() -> str:
    """One line listing the training architectures and aliases, for help texts."""
    aliases = {t: a for a, t in ALIASES.items()}
    return ", ".join(f"{n} (alias {aliases[n]})" if n in aliases else n for n in training_names())
