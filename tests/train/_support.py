"""Test support for the trainer: a synthetic batch source, a small TopK/BatchTopK training SAE (used while the
`sae` stage's architectures are not merged), and a worker entry point for subprocess tests.

    python tests/train/_support.py SPEC.json     runs `train` as SPEC describes (see `main`)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from saeforge.sae.base import SAE, SAEConfig, TrainStepInput, TrainStepOutput  # noqa: E402


class SyntheticSource:
    """Deterministic global batches of sparse combinations of planted directions, sliced by rank.

    Global batch i: [batch_size, d_in]; rank r of w yields rows [r * b / w, (r + 1) * b / w).
    nan_at: global batch index whose first row is NaN (fault tests).
    """

    def __init__(
        self,
        d_in: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        nan_at: int | None = None,
        n_features: int = 48,
    ):
        self.d_in, self.batch_size, self.seed = d_in, batch_size, seed
        self.rank, self.world_size, self.nan_at = rank, world_size, nan_at
        g = torch.Generator().manual_seed(1234)
        feats = torch.randn(n_features, d_in, generator=g)
        self.features = feats / feats.norm(dim=-1, keepdim=True)
        self.position = 0

    def global_batch(self, i: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        n = self.features.shape[0]
        active = torch.rand(self.batch_size, n, generator=g) < 4 / n
        mags = torch.rand(self.batch_size, n, generator=g) * 3 + 0.5
        x = (active * mags) @ self.features + 0.05 * torch.randn(self.batch_size, self.d_in, generator=g)
        if self.nan_at == i:
            x[0, 0] = float("nan")
        return x + 2.0

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        x = self.global_batch(self.position)
        self.position += 1
        per = self.batch_size // self.world_size
        return x[self.rank * per : (self.rank + 1) * per]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]

    def last_source(self) -> str:
        return f"synthetic batch {self.position - 1}"


class TinyTrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    k_aux: int | None = None

    @model_validator(mode="after")
    def _k(self) -> TinyTrainingConfig:
        if self.k is None:
            raise ValueError(f"k is required for {self.architecture}")
        return self


class TinyTopKSAE(SAE):
    architecture = "topk"

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        vals, idx = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


class TinyTrainingTopK(nn.Module):
    """TopK (or BatchTopK) with unit-norm decoder rows; BatchTopK's threshold is global over ranks."""

    def __init__(self, cfg: TinyTrainingConfig):
        super().__init__()
        self.cfg = cfg
        W_dec = torch.randn(cfg.d_sae, cfg.d_in)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        x = inp.x
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        if self.cfg.architecture == "batchtopk":
            local = pre.detach().relu().flatten().topk(self.cfg.k * x.shape[0]).values
            everyone = inp.collectives.all_gather_cat(local)
            thr = everyone.topk(self.cfg.k * x.shape[0] * inp.collectives.world_size).values[-1]
            z = pre.relu() * (pre.detach() >= thr)
        else:
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        x_hat = z @ self.W_dec + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        losses = {"mse": mse}
        if inp.dead_mask is not None and bool(inp.dead_mask.any()):
            dead_pre = pre.masked_fill(~inp.dead_mask, float("-inf"))
            vals, idx = dead_pre.topk(min(self.cfg.k_aux or 8, int(inp.dead_mask.sum())), dim=-1)
            e_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ self.W_dec
            losses["auxk"] = (e_hat - (x - x_hat).detach()).pow(2).sum(-1).mean() / 32
        active = z.detach() > 0
        return TrainStepOutput(
            x_hat=x_hat,
            loss=sum(losses.values()),
            losses=losses,
            fired=active.sum(0),
            l0=active.sum(-1).float().mean(),
        )

    def init_from_data(self, x_sample: Tensor) -> None:
        with torch.no_grad():
            self.b_dec.copy_(x_sample.mean(0))

    def before_optimizer_step(self) -> None:
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True) * self.W_dec
            self.W_dec.grad -= parallel

    def after_optimizer_step(self) -> None:
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)

    def export(self, activation_scale: float) -> SAE:
        cfg = SAEConfig(architecture="topk", d_in=self.cfg.d_in, d_sae=self.cfg.d_sae, k=self.cfg.k)
        sae = TinyTopKSAE(cfg)
        s = activation_scale
        with torch.no_grad():
            sae.W_enc.copy_(self.W_enc * s)
            sae.b_enc.copy_(self.b_enc)
            sae.W_dec.copy_(self.W_dec / s)
            sae.b_dec.copy_(self.b_dec / s)
        return sae


def tiny_save_sae(sae: SAE, path: Path, metadata: dict[str, Any] | None = None) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg.model_copy(update={"metadata": metadata or {}})
    (path / "cfg.json").write_text(cfg.model_dump_json(indent=1))
    save_file(sae.weights_for_saving(), str(path / "sae_weights.safetensors"))


def tiny_load_sae(path: Path) -> SAE:
    cfg = SAEConfig.model_validate_json((Path(path) / "cfg.json").read_text())
    sae = TinyTopKSAE(cfg)
    sae.load_state_dict(load_file(str(Path(path) / "sae_weights.safetensors")))
    return sae


def install_tiny_sae() -> None:
    """Provides the `sae` stage's API on saeforge.sae when that stage is not merged yet."""
    import saeforge.sae as api

    if hasattr(api, "create_training_sae"):
        return
    api.TrainingSAEConfig = TinyTrainingConfig
    api.TRAINING_ARCHITECTURES = {"topk": TinyTrainingTopK, "batchtopk": TinyTrainingTopK}
    api.create_training_sae = TinyTrainingTopK
    api.save_sae = tiny_save_sae
    api.load_sae = tiny_load_sae


def main(spec_path: str) -> None:
    """Runs `train` on a SyntheticSource. SPEC: {"config": TrainConfig dict, "source": SyntheticSource kwargs,
    "action_at": step, "action": "sigterm" | "block"}. Under torchrun each rank reads its slice."""
    install_tiny_sae()
    from saeforge.train import TrainConfig, TrainingInterrupted, train

    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    source = SyntheticSource(**spec["source"], rank=rank, world_size=world)
    action_at, action = spec.get("action_at"), spec.get("action")

    def progress(event):
        if event.step == action_at and action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif event.step == action_at and action == "block":
            print("BLOCKED", flush=True)
            time.sleep(600)

    try:
        results = train(TrainConfig.parse(spec["config"]), source=source, progress=progress)
    except TrainingInterrupted as e:
        print(f"INTERRUPTED {e}", flush=True)
        sys.exit(3)
    print("DONE " + json.dumps({r.name: r.metrics for r in results}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
