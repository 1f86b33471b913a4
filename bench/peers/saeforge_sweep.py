"""saeforge alone on the token stream of `python -m bench.peers quality`, one run per setting (a cheap sweep).

    PYTHONPATH=. python bench/peers/saeforge_sweep.py --problem minilm --store S --held-out H \\
        --tokens 301056 --batch 2048 --d-sae 6144 --k 32 --set lr=1e-3 --set lr=2e-3,lr_warmup_steps=0
    PYTHONPATH=. python bench/peers/saeforge_sweep.py --problem toy --tokens 4915200 --batch 4096 --d-sae 512 \\
        --k 16 --set "" --set optimizer=signum_sf

The same pool, step index (uniform draws, seed 0), held-out tokens and metrics as the paired harness
(bench/peers/quality.py), in one process: each --set (comma-separated spec fields key=value, JSON values; ""
for the defaults) trains saeforge's `train` with architecture, d_sae, k and those fields, and its exported SAE
is scored after every 1/curve-points of the run. One JSON line per run on stdout and in --out-jsonl. Used to
choose the TopK family's defaults (docs/architectures.md); the peers' numbers come from the harness itself.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.peers.quality import minilm_data, score, toy_data, write_index
from bench.quality import parse_sets


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=["toy", "minilm"], required=True)
    p.add_argument("--store", type=Path)
    p.add_argument("--held-out", type=Path)
    p.add_argument("--held-out-tokens", type=int, default=65_536)
    p.add_argument("--arch", default="topk")
    p.add_argument("--tokens", type=int, default=4_915_200)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--curve-points", type=int, default=4)
    p.add_argument("--set", action="append", default=[], help="spec fields key=value[,key=value]")
    p.add_argument("--run", action="append", default=[], help="TrainConfig fields key=value[,...] per --set")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--seed", type=int, default=0, help="the step index's draws (the runs' seeds: --set seed=N)"
    )
    p.add_argument("--out-jsonl", type=Path, default=None)
    p.add_argument("--tag", default="")
    return p.parse_args(argv)


def fields(text: str) -> dict:
    return parse_sets([item for item in text.split(",") if item])


def run_one(a, pool, index, held: Path, held_x, features, spec_extra: dict, run_extra: dict) -> dict:
    from saeforge.train import TrainConfig, train

    steps = len(index)
    bounds = {round(steps * (c + 1) / a.curve_points) for c in range(a.curve_points)}
    spec = {"name": a.arch, "architecture": a.arch, "d_sae": a.d_sae, "k": a.k, **spec_extra}
    first = torch.from_numpy(pool[np.sort(index[0])])
    curve, state = [], {"scale": None, "step": 0, "eval_s": 0.0}

    def batches():
        for rows in index:
            yield torch.from_numpy(pool[np.sort(rows)])

    def on_step(event) -> None:
        if state["scale"] is None:
            state["scale"] = float((event.x * first).sum() / first.pow(2).sum())
        state["step"] += 1
        if state["step"] in bounds and state["step"] < steps:
            t0 = time.perf_counter()
            curve.append(evaluate(event.saes[a.arch].export(activation_scale=state["scale"]), state["step"]))
            state["eval_s"] += time.perf_counter() - t0

    def evaluate(sae, step: int) -> dict:
        from bench.peers.quality_worker import _exported_codec, encode_held_out

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "o.npz"
            encode_held_out(_exported_codec(sae), sae.W_dec, held, out)
            return {"tokens": step * index.shape[1], **score(out, held_x, features)}

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            tokens=steps * index.shape[1],
            batch_size=index.shape[1],
            out=Path(tmp) / "run",
            plots=False,
            saes=[spec],
            **run_extra,
        )
        t0 = time.perf_counter()
        [trained] = train(cfg, source=batches(), on_step=on_step)
        seconds = time.perf_counter() - t0 - state["eval_s"]
        curve.append(evaluate(trained.sae, steps))
        card = trained.run_card
    t = card["training"]
    resolved = {
        **t["optimizer"],
        **t["schedule"],
        "grad_clip_norm": t["grad_clip_norm"],
        "dead": t["dead_tokens"],
    }
    row = {"set": spec_extra, "run": run_extra, "seconds": round(seconds, 1), **curve[-1], "curve": curve}
    return row | {"resolved": resolved}


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    sets = a.set or [""]
    runs = a.run + [""] * (len(sets) - len(a.run))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pool_path, held, features = (toy_data if a.problem == "toy" else minilm_data)(a, tmp)
        pool = np.load(pool_path, mmap_mode="r")
        index = np.load(write_index(a, len(pool), tmp))
        held_x = np.load(held)
        features_t = features
        for text, run_text in zip(sets, runs, strict=True):
            load = [round(v, 2) for v in os.getloadavg()]
            row = run_one(a, pool, index, held, held_x, features_t, fields(text), fields(run_text))
            row = {"problem": a.problem, "tokens": a.tokens, "d_sae": a.d_sae, "k": a.k, "tag": a.tag} | row
            row["load_before"] = load
            line = json.dumps(row)
            print(line, flush=True)
            if a.out_jsonl:
                with a.out_jsonl.open("a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
