"""Aligned-store benchmarks (issue 15, item 1).

1. `check_aligned` throughput: rows per second compared (token ids and positions of two page-cached stores).
2. AlignedLoader against one ActivationLoader per store drawing the same batches, in the same run: the
   aligned tuple should cost what its parts cost (ratio ~1; it gathers the same rows, schedules once).

    python -m bench.aligned_bench [--rows N] [--d-in D] [--json PATH]

Synthetic float32 stores (written with `write_store`, token ids and positions included) in a temporary
directory; times are the best of several repeats. Prints a table and writes JSON (default
bench/aligned_bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.store_bench import best_of


def main() -> None:
    from saeforge.activations import ActivationLoader, AlignedLoader, check_aligned, write_store

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("aligned_bench.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        n, d = args.rows, args.d_in
        tok = torch.randint(0, 50_000, (n,))
        pos = torch.stack([torch.arange(n) // 128, torch.arange(n) % 128], dim=1)
        stores = [
            write_store(Path(tmp) / f"s{i}", torch.randn(n, d), token_ids=tok, positions=pos)
            for i in range(2)
        ]
        check_aligned(stores)  # warm the page cache
        check_s = best_of(lambda: check_aligned(stores), 3)

        def aligned():
            loader = AlignedLoader(stores, args.batch_size, seed=1, verify=False, check=False)
            for _ in range(args.batches):
                next(loader)

        def separate():
            loaders = [ActivationLoader(s, args.batch_size, seed=1, verify=False) for s in stores]
            for _ in range(args.batches):
                for loader in loaders:
                    next(loader)

        aligned()
        separate()
        times = {"aligned": [], "separate": []}
        for _ in range(5):  # interleaved, so that load changes hit both alike
            times["aligned"].append(best_of(aligned, 1))
            times["separate"].append(best_of(separate, 1))
        a, s = min(times["aligned"]), min(times["separate"])
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg()},
        "rows": n,
        "d_in": d,
        "check_aligned_rows_per_s": n / check_s,
        "aligned_batch_ms": 1000 * a / args.batches,
        "separate_batches_ms": 1000 * s / args.batches,
        "aligned_over_separate": a / s,
    }
    print(f"check_aligned: {result['check_aligned_rows_per_s']:,.0f} rows/s ({n:,} rows, 2 stores)")
    print(
        f"AlignedLoader (2 x d_in {d}, batch {args.batch_size}): {result['aligned_batch_ms']:.2f} ms per tuple; "
        f"two ActivationLoaders: {result['separate_batches_ms']:.2f} ms; ratio {result['aligned_over_separate']:.3f}"
    )
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
