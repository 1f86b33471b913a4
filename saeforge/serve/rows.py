"""What one generated sequence asks for and what it reports back (backend-independent)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from saeforge.serve.saes import Edits


@dataclass(frozen=True)
class Sampling:
    """OpenAI sampling parameters of one sequence. temperature 0 is greedy (argmax)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class FeatureReadout:
    """Features one SAE read on one sequence.

    top: [(latent, max activation, mean activation)] over every position fed to the model (prompt and
    completion), largest max first, only latents that fired (max > 0). per_token[j]: [(latent, activation)] at the
    position whose logits chose completion token j (empty unless asked for).
    """

    sae: str
    top: list[tuple[int, float, float]]
    per_token: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class Finished:
    """The end of one sequence: `finish_reason` is "stop" (EOS or a stop string), "length" or "cancelled"."""

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    features: list[FeatureReadout] = field(default_factory=list)


@dataclass
class Row:
    """One sequence to generate. `on_text(delta)` and `on_finish(Finished)` are called from the worker thread;
    `on_error(exc)` instead of `on_finish` when the batch fails. Setting `cancelled` stops it at the next step."""

    prompt_ids: list[int]
    sampling: Sampling
    edits: Edits = field(default_factory=Edits)
    features_top: int = 0
    per_token: bool = False
    on_text: Callable[[str], None] = lambda _delta: None
    on_finish: Callable[[Finished], None] = lambda _f: None
    on_error: Callable[[BaseException], None] = lambda _e: None
    cancelled: threading.Event = field(default_factory=threading.Event)
