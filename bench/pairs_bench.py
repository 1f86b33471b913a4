"""The sparse path of a TopK-family step, BatchTopK's kept pairs padded to the widest row against flat (CSR), in one
process, interleaved.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/pairs_bench.py --before OTHER_CHECKOUT/saeforge/sae/kernels.py

Times gather_preacts forward + backward and sparse_decode forward + backward (no encoder matmul, no selection) at
one shape, on the pairs BatchTopK keeps there: "before" runs the kernels file given (an older checkout's) on
the pairs padded to the widest row with a keep mask, as BatchTopK did when its index was [B, w]; "after" runs
this checkout's kernels on the flat pairs. TopK's [B, k] index runs through both. Cases alternate in each round
(order reversed every other round); prints per-case medians (process CPU and wall ms) and per-round ratios
(min, median, max).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

from saeforge.sae import Collectives, create_training_sae, kernels


def _load(path: str):
    spec = importlib.util.spec_from_file_location("kernels_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spread(values: list[float]) -> list[float]:
    return [round(min(values), 2), round(statistics.median(values), 2), round(max(values), 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="a kernels.py whose functions take idx [B, w]")
    p.add_argument("--B", type=int, default=1024)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--rounds", type=int, default=40)
    a = p.parse_args()
    before = _load(a.before)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.d_in, generator=g) + torch.randn(a.B, a.d_in, generator=g)
    sae = create_training_sae(
        {"architecture": "batchtopk", "d_in": a.d_in, "d_sae": a.d_sae, "k": a.k, "b_dec_init": "mean"}
    )
    sae.init_from_data(x)
    xc = (x - sae.b_dec).detach()
    pre = sae._pre_no_grad(xc)
    flat = sae._select(xc, pre, Collectives())[0]
    width = int(torch.bincount(flat.tokens, minlength=a.B).max())
    slot = torch.arange(len(flat.latents)) - flat.offsets[flat.tokens]
    idx = torch.zeros(a.B, width, dtype=torch.long)
    keep = torch.zeros(a.B, width, dtype=torch.bool)
    idx[flat.tokens, slot], keep[flat.tokens, slot] = flat.latents, True
    topk_idx = kernels.topk_select(pre, a.k)[1]
    W_enc, b_enc, W_dec = (torch.nn.Parameter(t.detach().clone()) for t in (sae.W_enc, sae.b_enc, sae.W_dec))

    def step(module, sel, mask=None) -> None:
        v = module.gather_preacts(xc, W_enc, b_enc, pre, sel).relu()
        v = v if mask is None else v * mask
        module.sparse_decode(sel, v, W_dec).pow(2).sum().backward()
        W_enc.grad = b_enc.grad = W_dec.grad = None

    cases = {
        "batchtopk_before": lambda: step(before, idx, keep),
        "batchtopk_after": lambda: step(kernels, flat),
        "topk_before": lambda: step(before, topk_idx),
        "topk_after": lambda: step(kernels, topk_idx),
    }
    times = {c: {"cpu": [], "wall": []} for c in cases}
    for i in range(a.rounds + 2):
        for c in list(cases) if i % 2 == 0 else list(reversed(cases)):
            t, cpu = time.perf_counter(), time.process_time()
            cases[c]()
            if i >= 2:  # two warm-up rounds
                times[c]["wall"].append(time.perf_counter() - t)
                times[c]["cpu"].append(time.process_time() - cpu)
    out: dict[str, object] = {
        "B": a.B,
        "widest_row": width,
        "kept_pairs": len(flat.latents),
        "rounds": a.rounds,
    }
    for clock in ("cpu", "wall"):
        med = {c: round(1e3 * statistics.median(times[c][clock]), 1) for c in cases}
        out[f"{clock}_ms"] = med
        for num, den in (
            ("batchtopk_after", "batchtopk_before"),
            ("topk_after", "topk_before"),
            ("batchtopk_before", "topk_before"),
            ("batchtopk_after", "topk_after"),
        ):
            ratios = [n / d for n, d in zip(times[num][clock], times[den][clock], strict=True)]
            out[f"{clock} {num}/{den}"] = _spread(ratios)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
