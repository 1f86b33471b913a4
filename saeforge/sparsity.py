"""The sparsity settings a run names per SAE, declared once: constraints and help text, torch-free.

Each architecture's config fragment (`saeforge.sae`) declares the settings it reads with `setting(name)`, and
`SAESpec` (`saeforge.train.config`) inherits `SparsitySettings`, where every one is optional (unset: the
architecture's default). A bad value therefore fails with the same message when the run's YAML is read as when
the SAE is built, and the torch-free config modules need no architecture code. A setting only one new
architecture reads belongs in its own fragment (a run passes it through `SAESpec.options`), not here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

_DECLARED: dict[str, dict[str, Any]] = {
    "k": dict(
        gt=0, description="active latents per token (TopK family); penalty architectures' default target_l0"
    ),
    "k_aux": dict(
        gt=0, description="AuxK latents per token (TopK family); default d_in // 2, capped at the dead count"
    ),
    "sparsity_coefficient": dict(
        gt=0, description="fixed penalty weight lambda (standard: L1, jumprelu: L0, gated: L1)"
    ),
    "target_l0": dict(
        gt=0, description="penalty architectures: adapt lambda during training to reach this L0"
    ),
    "bandwidth": dict(
        gt=0, description="jumprelu: rectangle-kernel STE bandwidth epsilon (pre-activation units)"
    ),
    "group_sizes": dict(
        description="matryoshka: nested group sizes summing to d_sae (default: doubling groups)"
    ),
}
SPARSITY_FIELDS = tuple(_DECLARED)


def setting(name: str, default: Any = None) -> Any:
    """The pydantic field of sparsity setting `name` (its one set of constraints), with `default`."""
    return Field(default=default, **_DECLARED[name])


class SparsitySettings(BaseModel):
    """Every sparsity setting, unset by default."""

    k: int | None = setting("k")
    k_aux: int | None = setting("k_aux")
    sparsity_coefficient: float | None = setting("sparsity_coefficient")
    target_l0: float | None = setting("target_l0")
    bandwidth: float | None = setting("bandwidth")
    group_sizes: list[int] | None = setting("group_sizes")
