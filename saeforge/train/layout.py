"""How a batch's parts become what a dictionary reads (x) and reconstructs (its target).

A batch is one tensor (one store) or a tuple of aligned tensors, one per store (`activations.AlignedLoader`: the
same token rows). The run's kind says what they mean:

    sae          (x,)                   x = x, target = x
    crosscoder   (x_1, ..., x_n)        x = target = [x_1 | ... | x_n]   (sites concatenated, [B, n * d_in])
    transcoder   (x_in, y_out)          x = x_in, target = y_out

Each part is scaled by its own factor (`normalize_activations`: E||part|| = sqrt(width)) before it is combined,
and `export_scales` hands the factors to `TrainingSAE.export`, per input and target dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saeforge.train.config import ConfigError, TrainConfig

Parts = tuple[Tensor, ...]


@dataclass(frozen=True)
class DataLayout:
    """kind: "sae", "crosscoder" or "transcoder"; widths: each part's width, in order."""

    kind: str
    widths: tuple[int, ...]

    @staticmethod
    def of(cfg: TrainConfig, widths: tuple[int, ...], where: str) -> DataLayout:
        """The run's layout, checked against the parts' widths (ConfigError naming the fix)."""
        kind = "crosscoder" if cfg.crosscoder else ("transcoder" if len(widths) == 2 else "sae")
        if kind == "sae" and len(widths) != 1:
            raise ConfigError(
                f"activations: {where} gives {len(widths)} aligned parts per batch; pass crosscoder (--crosscoder) "
                "to train a crosscoder over them, or give one store (and target_activations for a transcoder)"
            )
        if kind == "crosscoder" and len(set(widths)) != 1:
            raise ConfigError(
                f"crosscoder: every site must have the same width, but {where} has widths {list(widths)}; "
                "choose sites of one width (the same hook type of each layer or model)"
            )
        return DataLayout(kind, tuple(int(w) for w in widths))

    @property
    def d_in(self) -> int:
        """The dictionary's d_in: the input's width (a crosscoder's: each site's)."""
        return self.widths[0]

    @property
    def d_y(self) -> int:
        """Width of the reconstruction target."""
        return sum(self.widths) if self.kind == "crosscoder" else self.widths[-1]

    def sae_fields(self, sites: list[str]) -> dict[str, Any]:
        """TrainingSAEConfig fields beyond the architecture's that this layout sets."""
        if self.kind == "crosscoder":
            return {"kind": "crosscoder", "d_in": self.d_in, "n_sites": len(self.widths), "sites": sites}
        if self.kind == "transcoder":
            return {"kind": "transcoder", "d_in": self.d_in, "d_out": self.widths[1]}
        return {"d_in": self.d_in}

    def combine(self, parts: Parts) -> tuple[Tensor, Tensor | None]:
        """Scaled parts -> (x [B, d_x], target [B, d_y] or None when the target is x)."""
        if self.kind == "crosscoder":
            return torch.cat(parts, dim=1), None
        if self.kind == "transcoder":
            return parts[0], parts[1]
        return parts[0], None

    def export_scales(self, scales: tuple[float, ...]) -> tuple[Any, Any]:
        """(activation_scale, target_scale) for `TrainingSAE.export`: numbers, or one per dimension."""
        if self.kind == "crosscoder":
            per_dim = torch.tensor(scales, dtype=torch.float64).repeat_interleave(self.widths[0])
            return per_dim, per_dim
        return scales[0], scales[-1]


def as_parts(batch: Tensor | Parts) -> Parts:
    """A batch as a tuple of parts (one tensor -> a 1-tuple)."""
    return (batch,) if isinstance(batch, Tensor) else tuple(batch)


def site_names(stores: list[Any]) -> list[str]:
    """Names of a crosscoder's sites: each store's hook, prefixed by its model when two stores share a hook."""
    if not stores:
        return []
    hooks = [getattr(s, "hook", None) or f"site{i}" for i, s in enumerate(stores)]
    if len(set(hooks)) == len(hooks):
        return hooks
    names = []
    for i, (store, hook) in enumerate(zip(stores, hooks, strict=True)):
        model = getattr(getattr(store.manifest, "model", None), "path", None) or f"model{i}"
        names.append(f"{str(model).rstrip('/').split('/')[-1]}:{hook}")
    return names if len(set(names)) == len(names) else [f"{n}#{i}" for i, n in enumerate(names)]
