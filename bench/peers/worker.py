"""One library's training step in its own interpreter, driven over a pipe by `bench.peers` (the coordinator).

    python bench/peers/worker.py --lib LIB --arch ARCH --batches BATCHES.npy [...]

Runs under the library's own virtual environment (bench/peers/install.sh), so it imports nothing of saeforge
unless LIB is saeforge. Protocol (one JSON object per line on stdout; commands on stdin):
    -> {"ready": true, "rss_mb": ...}          after building the model and optimiser
    <- "run N"   -> {"times": [s, ...]}        N training steps, the seconds of each
    <- "quit"    -> {"peak_mb": ..., "rss_mb": ...} and exit
Peak memory: on CUDA the allocator's peak; on CPU the process's peak resident set (ru_maxrss).

LIB is one of saeforge (the whole `saeforge.train.train` loop over an activation store: loader, metrics,
logging and its default checkpointing), gemm (the encoder GEMM alone: the floor of an exact dense method),
sae_lens, sparsify, dictionary_learning (each library's own training step on the coordinator's batches).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable

import numpy as np
import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_PIPE = None  # the protocol's stream: the process's original stdout (libraries' prints go to stderr)


def _send(obj: dict) -> None:
    _PIPE.write(json.dumps(obj) + "\n")
    _PIPE.flush()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the peers' steps: each returns step(x) doing what the library's own trainer does per batch ------------------


def _sae_lens(a: argparse.Namespace, device: torch.device) -> Callable:
    """SAELens 6: `training_forward_pass`, firing bookkeeping, backward, clip_grad_norm_(1.0), Adam, zero_grad
    (sae_lens/training/sae_trainer.py `_train_step`)."""
    import sae_lens
    from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput

    names = {
        "topk": "TopK",
        "batchtopk": "BatchTopK",
        "jumprelu": "JumpReLU",
        "gated": "Gated",
        "standard": "Standard",
    }
    name = names[a.arch]
    cfg_cls = getattr(sae_lens, f"{name}TrainingSAEConfig")
    extra = {"k": a.k} if a.arch in ("topk", "batchtopk") else {}
    cfg = cfg_cls(d_in=a.d_in, d_sae=a.d_sae, device=str(device), dtype="float32", **extra)
    sae = getattr(sae_lens, f"{name}TrainingSAE")(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    coeffs = {
        k: v.value if isinstance(v, TrainCoefficientConfig) else v for k, v in sae.get_coefficients().items()
    }
    since_fired = torch.zeros(a.d_sae, device=device)
    state = {"n": 0}

    def step(x: torch.Tensor) -> None:
        with _autocast(a, device):
            out = sae.training_forward_pass(
                step_input=TrainStepInput(
                    sae_in=x,
                    coefficients=coeffs,
                    dead_neuron_mask=since_fired > 1000,
                    n_training_steps=state["n"],
                    is_logging_step=False,
                )
            )
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        state["n"] += 1

    step.model = sae
    return step


def _sparsify(a: argparse.Namespace, device: torch.device) -> Callable:
    """sparsify 1.3.3: its default trainer step for the fvu loss (sparsify/trainer.py `fit`): decoder bias set to
    the first batch's mean, unit-norm decoder, SparseCoder forward (auxk_alpha defaults to 0 in 1.3.3, so no dead
    mask and no AuxK term), backward of fvu, remove the decoder-parallel gradient, ScheduleFreeWrapper(SignSGD)
    (its default optimiser, "signum") step, zero_grad, dead-latent counters. Evaluate between opt.eval() and
    opt.train() (schedule-free keeps the averaged weights for evaluation; sparsify saves those)."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    if a.arch != "topk":
        raise SystemExit(f"sparsify implements topk only, not {a.arch}")
    sae = SparseCoder(a.d_in, SparseCoderConfig(num_latents=a.d_sae, k=a.k), device, dtype=torch.float32)
    lr = 5e-3 / (sae.num_latents / 2**14) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    opt.train()
    since_fired = torch.zeros(a.d_sae, dtype=torch.long, device=device)
    did_fire = torch.zeros(a.d_sae, dtype=torch.bool, device=device)
    state = {"first": True, "fvu": 0.0}

    def step(x: torch.Tensor) -> None:
        if state["first"]:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
            state["first"] = False
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        with _autocast(a, device):
            out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        state["fvu"] += float(out.fvu.detach())
        loss = out.fvu + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        since_fired.add_(x.shape[0])
        since_fired[did_fire] = 0
        did_fire.zero_()

    step.model, step.optimizer = sae, opt
    return step


def _dictionary_learning(a: argparse.Namespace, device: torch.device) -> Callable:
    """dictionary_learning 0.1: the architecture's trainer's own `update(step, x)` (loss, backward, its
    decoder-norm handling, Adam, schedulers; its schedule spans --total-steps when given). Its TopK trainers
    warm up for 1000 steps and start BatchTopK's threshold at step 1000, and assert warm-up < steps: a run of
    1000 steps or fewer gets a tenth of its steps for both instead (the one change from its defaults)."""
    from dictionary_learning import trainers

    common = dict(activation_dim=a.d_in, dict_size=a.d_sae, layer=0, lm_name="bench", device=str(device))
    steps = a.total_steps or 1_000_000
    short = {} if steps > 1000 else {"warmup_steps": steps // 10, "threshold_start_step": steps // 10}
    if a.arch == "topk":
        trainer = trainers.TopKTrainer(steps=steps, k=a.k, **common, **short)
    elif a.arch == "batchtopk":
        trainer = trainers.BatchTopKTrainer(steps=steps, k=a.k, **common, **short)
    elif a.arch == "jumprelu":
        trainer = trainers.JumpReluTrainer(steps=steps, **common)
    elif a.arch == "gated":
        trainer = trainers.GatedSAETrainer(steps=steps, **common)
    elif a.arch == "standard":
        trainer = trainers.StandardTrainer(steps=steps, **common)
    else:
        raise SystemExit(f"dictionary_learning has no {a.arch}")
    state = {"n": 0}

    def step(x: torch.Tensor) -> None:
        with _autocast(a, device):
            trainer.update(state["n"], x)
        state["n"] += 1

    step.model = trainer.ae
    return step


def _gemm(a: argparse.Namespace, device: torch.device) -> Callable:
    """The encoder GEMM alone, x [B, d_in] @ W_enc [d_in, d_sae] + b_enc, W_enc column-major, in --dtype."""
    dtype = getattr(torch, a.dtype)
    W = torch.randn(a.d_sae, a.d_in, device=device, dtype=dtype).t()
    b = torch.zeros(a.d_sae, device=device, dtype=dtype)
    out = torch.empty(a.batch, a.d_sae, device=device, dtype=dtype)

    def step(x: torch.Tensor) -> None:
        torch.addmm(b, x.to(dtype), W, out=out)

    return step


def _autocast(a: argparse.Namespace, device: torch.device):
    import contextlib

    if a.dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


BUILDERS = {
    "sae_lens": _sae_lens,
    "sparsify": _sparsify,
    "dictionary_learning": _dictionary_learning,
    "gemm": _gemm,
}


class _Batches:
    """Batch i of an .npy [n, batch, d_in] float32, read from the file when asked (plain reads: a memory map's
    touched pages would count in the worker's resident set, so its peak would grow with --batches)."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            self.shape, _, dtype = read(f)
            self.offset = f.tell()
        assert dtype == np.float32, dtype
        self.path, self.nbytes = path, self.shape[1] * self.shape[2] * 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        out = torch.empty(self.shape[1], self.shape[2], dtype=torch.float32)
        with open(self.path, "rb") as f:
            f.seek(self.offset + i * self.nbytes)
            f.readinto(out.numpy())
        return out


def _serve_steps(step: Callable, batches: _Batches, device: torch.device) -> None:
    """Steps on the batches, cycled; each is read in before its step's clock starts, so a worker holds one
    batch at a time whatever --batches is (and its peak memory is its library's)."""
    _send({"ready": True, "rss_mb": _rss_mb()})
    i = 0
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "quit":
            break
        times = []
        for _ in range(int(cmd[1])):
            x = batches[i % len(batches)].to(device)
            i += 1
            t0 = time.perf_counter()
            step(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
        _send({"times": times})
    _send({"peak_mb": _peak_mb(device), "rss_mb": _rss_mb()})


def _serve_saeforge(a: argparse.Namespace, device: torch.device) -> None:
    """saeforge's public loop: `train` over the store, timed between consecutive `on_step` callbacks (each
    interval holds one whole loop iteration: loading, forward, backward, update, metrics, logging)."""
    from saeforge.train import TrainConfig, train

    spec = {"name": a.arch, "architecture": a.arch, "d_sae": a.d_sae}
    if a.arch in ("topk", "batchtopk"):
        spec["k"] = a.k
    cfg = TrainConfig.parse(
        {
            "activations": a.store,
            "tokens": a.total_steps * a.batch,
            "batch_size": a.batch,
            "out": a.out,
            "saes": [spec],
            "plots": False,
            "device": str(device),
            "autocast": "bfloat16" if a.dtype == "bfloat16" else "none",
        }
    )
    _send({"ready": True, "rss_mb": _rss_mb()})
    clock = {"want": 0, "times": [], "last": 0.0}

    def next_command() -> None:
        cmd = sys.stdin.readline().split()
        if not cmd or cmd[0] == "quit":
            _send({"peak_mb": _peak_mb(device), "rss_mb": _rss_mb()})
            os._exit(0)
        clock["want"], clock["times"] = int(cmd[1]), []
        _sync(device)
        clock["last"] = time.perf_counter()

    def on_step(event) -> None:
        _sync(device)
        now = time.perf_counter()
        clock["times"].append(now - clock["last"])
        clock["last"] = now
        if len(clock["times"]) == clock["want"]:
            _send({"times": clock["times"]})
            next_command()

    next_command()
    train(cfg, on_step=on_step)
    raise SystemExit("the saeforge run ended before the coordinator quit; give it more --total-steps")


def main() -> None:
    global _PIPE
    _PIPE = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    p = argparse.ArgumentParser()
    p.add_argument("--lib", required=True, choices=["saeforge", *BUILDERS])
    p.add_argument("--arch", required=True)
    p.add_argument("--batches", required=True, help=".npy [n, batch, d_in] float32")
    p.add_argument("--store", help="saeforge: activation store of the same rows")
    p.add_argument("--out", help="saeforge: run directory")
    p.add_argument(
        "--total-steps",
        type=int,
        default=0,
        help="steps of the run (saeforge: >= all requested; its schedule)",
    )
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    arr = _Batches(a.batches)
    a.batch, a.d_in = arr.shape[1], arr.shape[2]
    if a.lib == "saeforge":
        _serve_saeforge(a, device)
        return
    torch.manual_seed(0)
    step = BUILDERS[a.lib](a, device)
    _serve_steps(step, arr, device)


if __name__ == "__main__":
    main()
