"""Cost of verified reads (issue 12, item 2): an eval pass over page-cached shards with and without sha256.

Writes a synthetic float32 store, reads it once so that its shards are in the page cache, then times
`run_eval` of one TopK SAE over it with `verify=False` and with `verify=True` (the in-process record of
verified shards is cleared before every verified pass, so each one pays the full hashing), alternating the two
so that load drifts hit both alike. Also times hashing the store's bytes alone. Goal: verified within 5% of
unverified.

    python -m bench.verify_bench [--rows N] [--d-in D] [--repeats R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def measure(rows: int, d_in: int, expansion: int, repeats: int) -> dict:
    from saeforge.activations import store as store_mod
    from saeforge.activations.writer import write_store
    from saeforge.eval import EvalConfig, run_eval
    from saeforge.sae import save_sae
    from saeforge.sae.base import SAEConfig
    from saeforge.sae.topk import TopKSAE

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = write_store(root / "store", torch.randn(rows, d_in), shard_rows=16384)
        sae = TopKSAE(SAEConfig(architecture="topk", d_in=d_in, d_sae=expansion * d_in, k=32))
        save_sae(sae, root / "sae", metadata={"hook_name": store.hook})
        files = [store.shard_path(i) for i in range(store.num_shards)]
        for f in files:  # into the page cache
            f.read_bytes()
        t0 = time.perf_counter()
        for f in files:
            store_mod.sha256_file(f)
        hash_s = time.perf_counter() - t0

        def one(verify: bool) -> float:
            store_mod._VERIFIED.clear()
            t = time.perf_counter()
            run_eval(EvalConfig(saes=[root / "sae"], activations=store.path, verify=verify))
            return time.perf_counter() - t

        times: dict[bool, list[float]] = {False: [], True: []}
        one(False)  # warm-up
        for _ in range(repeats):
            for v in (False, True):
                times[v].append(one(v))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        return {
            "rows": rows,
            "d_in": d_in,
            "d_sae": expansion * d_in,
            "store_bytes": sum(f.stat().st_size for f in files),
            "hash_only_s": hash_s,
            "eval_unverified_s": off,
            "eval_verified_s": on,
            "overhead": on / off - 1,
            "all_unverified_s": times[False],
            "all_verified_s": times[True],
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1min": os.getloadavg()[0],
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=65536)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    res = measure(a.rows, a.d_in, a.expansion, a.repeats)
    print(
        f"store {res['store_bytes'] / 2**20:.0f} MiB ({res['rows']} x {res['d_in']} float32), TopK d_sae "
        f"{res['d_sae']}: hashing alone {res['hash_only_s']:.3f} s; eval unverified {res['eval_unverified_s']:.3f} s, "
        f"verified {res['eval_verified_s']:.3f} s (median of {a.repeats}): overhead {100 * res['overhead']:+.1f}%; "
        f"load average {res['load_avg_1min']:.1f} on {res['cpu_count']} cores"
    )
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
