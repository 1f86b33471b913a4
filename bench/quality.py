"""Dictionary quality of every architecture with its defaults, through `saeforge.train.train` (the real loop).

    PYTHONPATH=. python bench/quality.py toy [--archs topk jumprelu] [--tokens 4_900_000] [--d-sae 512]
    PYTHONPATH=. python bench/quality.py minilm [--tokens ...]

toy: 512 planted features in d_in=128 firing 16 per token (`saeforge.synthetic`, seed 0), the issue-14 problem.
Each SAE gets only its architecture and d_sae (plus any `--set key=value` spec fields); everything else is its
default. Measured on 65,536 held-out tokens with the exported (inference) SAE: MMCS (mean over true features of
the best decoder cosine), FVU, L0, and the dead fraction (latents that never fire on the held-out tokens).
minilm: layer-3 residual activations of the built-in MiniLM model on the built-in corpus (FVU, L0, dead).
One JSON line per run is appended to --out-jsonl; docs/benchmarks.md records the results.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saeforge.synthetic import SyntheticActivations, SyntheticConfig, feature_recovery
from saeforge.train import TrainConfig, train

ARCHITECTURES = ("topk", "batchtopk", "matryoshka", "jumprelu", "gated", "standard")
TOY = SyntheticConfig(d_in=128, n_features=512, l0=16.0, seed=0)


@functools.cache
def toy_pool(n: int, cfg: SyntheticConfig) -> torch.Tensor:
    """[n, d_in] tokens of the toy problem, cached in the temp folder (generating them takes a minute here)."""
    path = Path(tempfile.gettempdir()) / f"saeforge-toy-{n}-{zlib.crc32(repr(cfg).encode()):08x}.safetensors"
    if path.exists():
        return load_file(path)["x"]
    data = SyntheticActivations(cfg)
    pool = torch.cat([data.sample(8192) for _ in range(n // 8192)])
    save_file({"x": pool}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)
    return pool


class PoolSource:
    """Endless [batch_size, d_in] batches drawn uniformly (seed 0) from pool [n, d_in]."""

    def __init__(self, pool: torch.Tensor, batch_size: int):
        self.pool, self.batch_size, self.d_in = pool, batch_size, pool.shape[1]

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield self.pool[torch.randint(len(self.pool), (self.batch_size,), generator=g)]


class ToySource(PoolSource):
    """Batches from a pool of `pool` toy-problem tokens.

    Sampling the toy problem costs more than a training step at d_sae 512 on this CPU, so each run draws from one
    pool generated once per process (2^20 tokens: ~5 passes at 4.9 M tokens, every run the same batches)."""

    def __init__(self, batch_size: int, pool: int = 2**20, cfg: SyntheticConfig = TOY):
        super().__init__(toy_pool(pool, cfg), batch_size)


@torch.no_grad()
def measure(sae, x: torch.Tensor, features: torch.Tensor | None) -> dict[str, float]:
    """Held-out metrics of an exported SAE on x [N, d_in]."""
    z = sae.encode(x)
    x_hat = sae.decode(z)
    out = {
        "fvu": float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
        "l0": float((z > 0).sum(1).float().mean()),
        "dead": float(((z > 0).sum(0) == 0).float().mean()),
    }
    if features is not None:
        out["mmcs"] = feature_recovery(sae.W_dec, features)
    return out


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        out[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return out


def run_one(
    arch: str, source, tokens: int, batch_size: int, d_sae: int, extra: dict, run: dict | None = None
) -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            **(run or {}),
            tokens=tokens,
            batch_size=batch_size,
            out=Path(tmp) / "run",
            plots=False,
            log_every=50,
            saes=[{"name": arch, "architecture": arch, "d_sae": d_sae, **extra}],
        )
        t0 = time.perf_counter()
        [trained] = train(cfg, source=source)
        return trained, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("problem", choices=["toy", "minilm"])
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--tokens", type=int, default=4_900_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--set", nargs="*", default=[], help="spec fields, key=value (JSON values)")
    parser.add_argument(
        "--run-set", nargs="*", default=[], help="TrainConfig fields, key=value (JSON values)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-jsonl", type=Path, default=Path("bench/results/quality.jsonl"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extra = parse_sets(args.set)
    if args.problem == "toy":
        toy = SyntheticActivations(TOY)
        toy._generator = torch.Generator().manual_seed(2**31 - 1)  # same features, tokens unseen in training
        held_out, features = toy.sample(65_536), toy.features
    for arch in args.archs:
        source = ToySource(args.batch_size)
        trained, secs = run_one(
            arch, source, args.tokens, args.batch_size, args.d_sae, extra, parse_sets(args.run_set)
        )
        row = {
            "problem": args.problem,
            "arch": arch,
            "tokens": args.tokens,
            "d_sae": args.d_sae,
            "set": extra,
            "run_set": parse_sets(args.run_set),
            "tag": args.tag,
            "seconds": round(secs, 1),
            **measure(trained.sae, held_out, features),
        }
        last = trained.history[-1]
        row["train_l0"] = last.get("l0")
        print(json.dumps(row), flush=True)
        with args.out_jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
