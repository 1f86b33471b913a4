"""What a run returns: the exported SAEs with their folders, run cards and metric histories; the run's errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeforge import sae as sae_api
from saeforge.atomic import write_text
from saeforge.report.card import CARD_FILENAME, write_sae_card
from saeforge.report.figures import plot_curves
from saeforge.sae.base import SAE
from saeforge.train.runcard import run_card
from saeforge.train.sharded import save_sharded_sae
from saeforge.train.tensor_parallel import state_bytes

RUN_CARD = "run_card.json"
CURVES = "curves.png"


class NonFiniteError(RuntimeError):
    """NaN or inf in an input batch or a loss; the run stopped before updating any weight."""


@dataclass
class TrainedSAE:
    """One trained SAE.

    sae: the exported inference SAE (takes raw activations); under latent sharding (tensor_parallel > 1) the
        whole SAE read back from `path` on rank 0, this rank's exported shard on the others. path: its folder
        (cfg.json + weights).
    metrics: the final record's metrics. history: every record, {"step", "tokens", "loss", <loss terms>, "l0",
    "fvu", "dead_fraction", "lr"}.
    """

    name: str
    sae: SAE
    path: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    run_card: dict[str, Any]


def export_results(run: Any) -> list[TrainedSAE]:
    """Exports every SAE (folded to raw activations), writes its folder, the run card and the curves."""
    out = []
    for m in run.members:
        x_scale, y_scale = run.layout.export_scales(run.scale)
        target = {} if run.layout.kind == "sae" else {"target_scale": y_scale}
        sae = m.model.export(activation_scale=x_scale, **target)
        hist = [{"step": r["step"], "tokens": r["tokens"], **r["saes"][m.name]} for r in run.history]
        card = run_card(
            run.cfg,
            m.resolved.spec,
            sae_config=m.resolved.sae_cfg.model_dump(mode="json"),
            optim=m.optim,
            dead_tokens=m.resolved.dead_tokens,
            live_rate=m.resolved.live_rate,
            data=run.data,
            activation_scale=run.saved_scale,
            world_size=run.mesh.dp,
            steps=run.total_steps,
            device=str(run.device),
            num_rows=run.store.num_rows if run.store is not None else None,
        )
        if run.layout.kind == "transcoder" and len(run.stores) == 2:
            card["hook_name_out"] = run.stores[1].hook
        card["training"]["tensor_parallel"] = run.mesh.tp
        card["training"]["state_bytes_per_rank"] = state_bytes(m.model, m.optimizer, m.clock.state())
        card["final_metrics"] = (
            {k: v for k, v in hist[-1].items() if k not in ("step", "tokens")} if hist else {}
        )
        path = run.cfg.out / m.name
        if run.mesh.sharded:
            if run.mesh.dp_rank == 0:
                save_sharded_sae(sae, path, card, run.mesh, m.resolved.d_sae)
            run.ctx.barrier()
            sae = sae_api.load_sae(path) if run.ctx.is_main else sae
        elif run.ctx.is_main:
            sae_api.save_sae(sae, path, metadata=card)
        if run.ctx.is_main:
            write_sae_card(path)
        out.append(TrainedSAE(m.name, sae, path, card["final_metrics"], hist, card))
    if run.ctx.is_main:
        write_text(run.cfg.out / RUN_CARD, json.dumps({t.name: t.run_card for t in out}, indent=1))
        if run.cfg.plots:
            plot_curves(run.history, run.cfg.out / CURVES)
    run.ctx.barrier()
    return out


def artefacts(out: Path, results: list[TrainedSAE]) -> list[tuple[Path, str]]:
    """The files a tracker attaches to the run: (path, folder): the run card, the curves, each SAE's card."""
    return [(out / RUN_CARD, ""), (out / CURVES, "")] + [(r.path / CARD_FILENAME, r.name) for r in results]


def non_finite(
    step: int, input_bad: bool, bad_saes: list[str], where: str, kept: Path | None
) -> NonFiniteError:
    keep = f"the last good checkpoint is {kept}" if kept else "no checkpoint had been written"
    if input_bad:
        what = "NaN or inf in the input activations"
    else:
        what = f"NaN or inf in the loss of SAE {bad_saes} (inputs were finite)"
    return NonFiniteError(f"{what} at step {step}, batch from {where}; weights not updated, {keep}")
