"""`python -m bench.screen_bench --store DIR`: the bf16 TopK screen (saeforge.sae.screen) against the exact fp32
selection on real activations, interleaved, with the fallback rate; and the GEMM rates it rests on.

The store is e.g. MiniLM's layer 3 (`saeforge capture --model <builtin MiniLM> --data builtin:train --hook
layers.3.resid_post --tokens 16384 --out DIR`). The SAE is saeforge's TopK at initialisation and after
`--train-steps` steps of `saeforge.train.train` on the same store (the screen's margin depends on how peaked
the pre-activations are, so both are reported). `--margins 64,256,1024` also counts the fallback rate at
other margins; `near_tie_rate` is the share of rows whose k-th and (k+1)-th fp32 values lie within fp32's own
error bound of each other (decided in float64), `rescreened_rate` the share the margin left to a wider pass.

`--architecture batchtopk` trains BatchTopK instead and times its batch rule three ways: over the whole batch
through the screen (`screened_batch_topk`), from each row's 2k offers through the row-wise screen (its
fallback), and from the dense fp32 GEMM's offers; it counts the batches of the store the batch screen certifies
and checks its pairs against the float64 batch rule.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from bench.harness import machine_info  # noqa: E402
from saeforge.distributed import Collectives  # noqa: E402
from saeforge.sae.screen import exact_topk, screened_batch_topk, screened_topk  # noqa: E402


def _interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    out = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def measure(x: torch.Tensor, sae, k: int, margin: int, repeats: int) -> dict:
    """x [B, d_in] raw activations; sae an exported TopK SAE. Times the exact and screened selections and the
    fp32 / bf16 GEMMs, interleaved; returns medians, min/max, the speed-up and the fallback rate."""
    xc = (x - sae.b_dec).detach()
    W, b = sae.W_enc.detach().t().contiguous().t(), sae.b_enc.detach()
    xb, Wb = xc.bfloat16(), W.bfloat16()
    result = {}
    fns = {
        "exact_topk": lambda: exact_topk(xc, W, b, k),
        "screened_topk": lambda: result.__setitem__("last", screened_topk(xc, W, b, k, margin)),
        "gemm_fp32": lambda: torch.addmm(b, xc, W),
        "gemm_bf16": lambda: xb @ Wb,
    }
    times = _interleaved(fns, repeats)
    got, ref = result["last"], exact_topk(xc, W, b, k)
    real = (xc.double() @ W.double() + b.double()).topk(k, dim=1).indices.sort(1).values
    mine, dense = got.indices.sort(1).values, ref.indices.sort(1).values
    same = torch.equal(mine, dense)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {
        "seconds": {n: {"median": med[n], "min": min(t), "max": max(t)} for n, t in times.items()},
        "screen_speedup": med["exact_topk"] / med["screened_topk"],
        "bf16_gemm_speedup": med["gemm_fp32"] / med["gemm_bf16"],
        "fallback_rows": got.fallback,
        "rows": x.shape[0],
        "fallback_rate": got.fallback / x.shape[0],
        "near_tie_rate": got.near_ties / x.shape[0],
        "rescreened_rate": got.rescreened / x.shape[0],
        "selection_equal": same,
        # the screen's contract is the real-arithmetic (float64) TopK; the dense fp32 GEMM's rounding reorders
        # near-equal latents in a few rows
        "rows_screen_differs_from_float64": int((mine != real).any(1).sum()),
        "rows_dense_fp32_differs_from_float64": int((dense != real).any(1).sum()),
        "rows_screen_differs_from_dense_fp32": int((mine != dense).any(1).sum()),
    }


def _float64_batch_rule(xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor, n_keep: int) -> set:
    real = xc.double() @ W.double() + b.double()
    tau = real.flatten().topk(n_keep).values[-1]
    return set(map(tuple, ((real >= tau) & (real > 0)).nonzero().tolist()))


def measure_batch(xs: list[torch.Tensor], sae, k: int, repeats: int) -> dict:
    """xs: batches [B, d_in] of raw activations; sae an exported BatchTopK SAE. Times BatchTopK's selection on
    the first batch (the batch screen, the row-wise screen's 2k offers, the dense GEMM's 2k offers, and the two
    GEMMs), interleaved; over every batch, whether the batch screen certified and how many candidates it took."""
    W, b = sae.W_enc.detach().t().contiguous().t(), sae.b_enc.detach()
    xcs = [(x - sae.b_dec).detach() for x in xs]
    xc, n_keep = xcs[0], k * len(xs[0])
    xb, Wb = xc.bfloat16(), W.bfloat16()
    fns = {
        "batch_screen": lambda: screened_batch_topk(xc, W, b, n_keep, Collectives()),
        "rowwise_screen_offers": lambda: screened_topk(xc, W, b, 2 * k),
        "dense_offers": lambda: exact_topk(xc, W, b, 2 * k),
        "gemm_fp32": lambda: torch.addmm(b, xc, W),
        "gemm_bf16": lambda: xb @ Wb,
    }
    times = _interleaved(fns, repeats)
    med = {n: statistics.median(t) for n, t in times.items()}
    batches = []
    for x in xcs:
        sel = screened_batch_topk(x, W, b, k * len(x), Collectives())
        batches.append(
            {
                "certified": sel is not None,
                "candidates_per_row": sel.candidates / len(x) if sel else None,
                "kept_per_row": len(sel.values) / len(x) if sel else None,
                "equal_to_float64_batch_rule": (
                    set(zip(sel.tokens.tolist(), sel.latents.tolist(), strict=True))
                    == _float64_batch_rule(x, W, b, k * len(x))
                    if sel
                    else None
                ),
            }
        )
    return {
        "seconds": {n: {"median": med[n], "min": min(t), "max": max(t)} for n, t in times.items()},
        "batch_screen_over_rowwise": med["rowwise_screen_offers"] / med["batch_screen"],
        "batch_screen_over_dense": med["dense_offers"] / med["batch_screen"],
        "certified_batches": sum(r["certified"] for r in batches),
        "batches": batches,
    }


def main(argv: list[str] | None = None) -> int:
    from saeforge.activations.store import ActivationStore
    from saeforge.train import TrainConfig, train

    p = argparse.ArgumentParser(prog="python -m bench.screen_bench", description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--margin", type=int, default=None, help="default: the library's (k + 64)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--architecture", choices=("topk", "batchtopk"), default="topk")
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--margins",
        default="",
        help="comma-separated margins whose fallback and rescreen rates are also counted (untimed)",
    )
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    store = ActivationStore.open(a.store)
    acts = store.shard(0)["activations"].float()
    x = acts[: a.batch]
    out = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(a).items()}, "saes": {}}
    for steps in (1, a.train_steps):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig.parse(
                {
                    "activations": str(a.store),
                    "tokens": steps * a.batch,
                    "batch_size": a.batch,
                    "out": tmp,
                    "plots": False,
                    "final_checkpoint": False,
                    "saes": [{"name": "sae", "architecture": a.architecture, "d_sae": a.d_sae, "k": a.k}],
                }
            )
            sae = train(cfg)[0].sae
        if a.architecture == "batchtopk":
            xs = list(acts[: len(acts) // a.batch * a.batch].split(a.batch))
            out["saes"][f"after_{steps}_steps"] = measure_batch(xs, sae, a.k, a.repeats)
            print(
                json.dumps({f"after_{steps}_steps": out["saes"][f"after_{steps}_steps"]}, indent=1),
                flush=True,
            )
            continue
        out["saes"][f"after_{steps}_steps"] = measure(x, sae, a.k, a.margin, a.repeats)
        by_margin = {
            m: screened_topk((x - sae.b_dec).detach(), sae.W_enc.detach(), sae.b_enc.detach(), a.k, m)
            for m in (int(v) for v in a.margins.split(",") if v)
        }
        for what in ("fallback", "rescreened"):
            out["saes"][f"after_{steps}_steps"][f"{what}_rate_by_margin"] = {
                m: getattr(r, what) / x.shape[0] for m, r in by_margin.items()
            }
        print(json.dumps({f"after_{steps}_steps": out["saes"][f"after_{steps}_steps"]}, indent=1), flush=True)
    out["load_after"] = [round(v, 2) for v in os.getloadavg()]
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
