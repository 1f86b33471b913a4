"""One library trains one dictionary on the coordinator's token stream and encodes held-out tokens with it.

    python bench/peers/quality_worker.py --lib LIB --arch ARCH --pool POOL.npy --index INDEX.npy [...]

Driven over a pipe by `python -m bench.peers quality` (bench/peers/quality.py); runs in the library's own venv.
The token stream is the same for every library: step i trains on the rows POOL[INDEX[i]] ([batch, d_in]).
The training steps are bench/peers/worker.py's (each library's own step with its own defaults); the held-out
codes come from each library's own inference path: SAELens's saved inference model (`save_inference_model`,
TopK -> TopKSAE, BatchTopK -> JumpReLUSAE with its learnt threshold), sparsify's `encode`/`decode` with the
schedule-free averaged weights (`opt.eval()`), dictionary_learning's `ae.encode`/`ae.decode` (BatchTopK with its
learnt threshold, its default), saeforge's exported SAE (`TrainingSAE.export`, what `train` returns).
Protocol (one JSON object per line on stdout; commands on stdin):
    -> {"ready": true}
    <- "train N"          -> {"seconds": s}  N more steps; s = their wall-clock (batch gather + step)
    <- "eval HELD OUT"    -> {"ok": true}    encode HELD.npy [n, d_in]; write OUT.npz: x_hat [n, d_in],
                                             l0 [n] (nonzeros per row), fired [d_sae] (rows each latent fired
                                             on), W_dec [d_sae, d_in]
    <- "quit"             -> exit
The coordinator computes every metric from these arrays, identically for every library.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import worker  # noqa: E402  (bench/peers/worker.py: the libraries' training steps)

Codec = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x [n, d_in] -> (z [n, d_sae], x_hat)


def _stream(pool: np.ndarray, index: np.ndarray) -> Iterator[torch.Tensor]:
    for rows in index:
        yield torch.from_numpy(pool[np.sort(rows)])


def _dense(z: torch.Tensor) -> torch.Tensor:
    return z.to_dense() if z.is_sparse else z


def _codec(lib: str, step) -> tuple[Codec, Callable[[], None], torch.Tensor]:
    """(codec, done, W_dec [d_sae, d_in]) of a peer's current dictionary; call done() after encoding."""
    model = step.model
    if lib == "sae_lens":
        from sae_lens import SAE

        with tempfile.TemporaryDirectory() as tmp:
            model.save_inference_model(tmp)
            sae = SAE.load_from_disk(tmp, device="cpu")

        def codec(x):
            z = _dense(sae.encode(x))
            return z, sae.decode(z)

        return codec, lambda: None, sae.W_dec.detach()
    if lib == "sparsify":
        step.optimizer.eval()

        def codec(x):
            acts, idx, _ = model.encode(x)
            z = torch.zeros(x.shape[0], model.num_latents).scatter_(1, idx, acts.float())
            return z, model.decode(acts, idx)

        return codec, step.optimizer.train, model.W_dec.detach().clone()
    if lib == "dictionary_learning":

        def codec(x):
            z = model.encode(x)
            return z, model.decode(z)

        return codec, lambda: None, model.decoder.weight.detach().t()
    raise SystemExit(f"no codec for {lib}")


def _exported_codec(sae) -> Codec:
    def codec(x):
        z = sae.encode(x)
        return z, sae.decode(z)

    return codec


@torch.no_grad()
def encode_held_out(codec: Codec, W_dec: torch.Tensor, held: Path, out: Path, chunk: int = 4096) -> None:
    x_all = torch.from_numpy(np.load(held))
    x_hat, l0, fired = [], [], torch.zeros(W_dec.shape[0], dtype=torch.long)
    for x in x_all.split(chunk):
        z, xh = codec(x)
        active = z > 0
        x_hat.append(xh.float())
        l0.append(active.sum(1))
        fired += active.sum(0)
    np.savez(
        out,
        x_hat=torch.cat(x_hat).numpy(),
        l0=torch.cat(l0).numpy(),
        fired=fired.numpy(),
        W_dec=W_dec.float().contiguous().numpy(),
    )


def _command() -> list[str]:
    cmd = sys.stdin.readline().split()
    return cmd if cmd else ["quit"]


def serve_peer(a: argparse.Namespace, pool: np.ndarray, index: np.ndarray) -> None:
    torch.manual_seed(a.seed)
    step = worker.BUILDERS[a.lib](a, torch.device("cpu"))
    batches = _stream(pool, index)
    worker._send({"ready": True})
    while (cmd := _command())[0] != "quit":
        if cmd[0] == "train":
            t0 = time.perf_counter()
            for _ in range(int(cmd[1])):
                step(next(batches))
            worker._send({"seconds": time.perf_counter() - t0})
        else:
            codec, done, W_dec = _codec(a.lib, step)
            encode_held_out(codec, W_dec, Path(cmd[1]), Path(cmd[2]))
            done()
            worker._send({"ok": True})


def serve_saeforge(a: argparse.Namespace, pool: np.ndarray, index: np.ndarray) -> None:
    """saeforge's public loop, `train(cfg, source=...)`, paused inside its `on_step` callback between commands;
    a chunk's seconds run from the callback's return to the callback after its last step."""
    from saeforge.train import TrainConfig, train

    spec = {"name": a.arch, "architecture": a.arch, "d_sae": a.d_sae, "k": a.k, "seed": a.seed}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            tokens=len(index) * index.shape[1],
            batch_size=index.shape[1],
            out=Path(tmp) / "run",
            plots=False,
            saes=[spec],
            seed=a.seed,
        )
        first = torch.from_numpy(pool[np.sort(index[0])])
        clock = {"left": 0, "t0": 0.0, "scale": None}

        def serve(event) -> None:
            while (cmd := _command())[0] != "quit":
                if cmd[0] == "train":
                    clock["left"], clock["t0"] = int(cmd[1]), time.perf_counter()
                    return
                sae = event.saes[a.arch].export(activation_scale=clock["scale"])
                encode_held_out(_exported_codec(sae), sae.W_dec, Path(cmd[1]), Path(cmd[2]))
                worker._send({"ok": True})
            os._exit(0)

        def on_step(event) -> None:
            if clock["scale"] is None:  # the trainer's activation scale, from the first (scaled) batch
                clock["scale"] = float((event.x * first).sum() / first.pow(2).sum())
                if not torch.allclose(event.x, first * clock["scale"], rtol=1e-4, atol=1e-5):
                    raise SystemExit("saeforge's first batch is not the stream's first batch times a scale")
            clock["left"] -= 1
            if clock["left"] == 0:
                worker._send({"seconds": time.perf_counter() - clock["t0"]})
                serve(event)

        worker._send({"ready": True})
        cmd = _command()
        if cmd[0] != "train":
            os._exit(0)
        clock["left"], clock["t0"] = int(cmd[1]), time.perf_counter()
        train(cfg, source=_stream(pool, index), on_step=on_step)
    raise SystemExit("the saeforge run ended before the coordinator quit")


def main() -> None:
    worker._PIPE = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    p = argparse.ArgumentParser()
    p.add_argument(
        "--lib", required=True, choices=["saeforge", "sae_lens", "sparsify", "dictionary_learning"]
    )
    p.add_argument("--arch", required=True, choices=["topk", "batchtopk"])
    p.add_argument("--pool", required=True, help=".npy [rows, d_in] float32")
    p.add_argument("--index", required=True, help=".npy [steps, batch] int64: the rows of each step")
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--seed", type=int, default=0, help="torch's seed (peers) / the SAE's and run's (saeforge)"
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pool, index = np.load(a.pool, mmap_mode="r"), np.load(a.index)
    a.d_in, a.batch, a.total_steps, a.device, a.dtype = (
        pool.shape[1],
        index.shape[1],
        len(index),
        "cpu",
        "float32",
    )
    (serve_saeforge if a.lib == "saeforge" else serve_peer)(a, pool, index)


if __name__ == "__main__":
    main()
