"""`saeforge serve` benchmarks (issue 17, item 7), all in one run on the same prompts.

1. Single stream: greedy tokens/s of one client sending the prompts one after another to the server (HTTP,
   /v1/completions, no features, no audit log) against a bare `model.generate` loop over the same prompts in
   this process. Goal: >= 0.9.
2. Feature inspection + audit: the same single stream with `return_features: {"top": 10}` on every request and
   the audit log on (10 features per SAE per record, full text, fsynced group commits) against (1). Goal: <= 10%
   more time per token.
3. Concurrency: total completion tokens/s of 8 clients sending at once against 1 client (dynamic batching).
   Goal: >= 2x.

    python -m bench.serve_bench [--quick] [--json PATH]

The model is a randomly initialised GPT-2 (d_model 256, 4 layers, 4 heads, the tests' BPE tokenizer) with a
ReLU SAE (d_sae 2048) at layers.2.resid_post; random weights generate at the speed trained ones do. The server
runs in its own process (so that client and server do not share one interpreter lock); server and bare loop use
`--threads` torch threads (default 1: on a shared machine two spinning intra-op threads measure the neighbours);
every configuration is measured `--rounds` times interleaved and the best round counts. Writes JSON (default bench/results/serve.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
HOOK = "layers.2.resid_post"


def build_assets(root: Path, d: int = 256, layers: int = 4, d_sae: int = 2048) -> tuple[Path, Path]:
    """A random GPT-2 directory and a ReLU SAE directory under `root`."""
    import transformers as tf
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO))
    from saeforge.sae.base import SAEConfig
    from saeforge.sae.io import save_sae
    from saeforge.sae.standard import StandardSAE
    from tests.tiny_models import build_tokenizer

    tok_dir = build_tokenizer(root / "tok")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = tf.GPT2Config(
        n_embd=d,
        n_layer=layers,
        n_head=4,
        n_positions=1024,
        vocab_size=len(tok) + 64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model_dir = root / "model"
    tf.GPT2LMHeadModel(cfg).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    g = torch.Generator().manual_seed(1)
    sae = StandardSAE(SAEConfig(architecture="standard", d_in=d, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, d_sae, generator=g) / d**0.5)
        w = torch.randn(d_sae, d, generator=g)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
    return model_dir, save_sae(sae, root / "sae", {"hook_name": HOOK})


def prompts(n: int) -> list[str]:
    from itertools import islice

    from saeforge.text import read_texts

    return [" ".join(t.split()[:24]) for t in islice(read_texts("builtin:train"), n)]


def bare_generate(model_dir: Path, texts: list[str], max_tokens: int) -> tuple[int, float]:
    from saeforge.models import load_model

    loaded = load_model(model_dir)
    tok = loaded.tokenizer
    n, start = 0, time.perf_counter()
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt")
            out = loaded.model.generate(
                **enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
            n += out.shape[1] - enc["input_ids"].shape[1]
    return n, time.perf_counter() - start


def start_server(model_dir: Path, sae_dir: Path, audit: Path | None) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "bench.serve_bench",
        "--serve",
        str(model_dir),
        str(sae_dir),
        str(audit or "-"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"the server did not start: {url!r}")
    return proc, url


def _server_main(model_dir: str, sae_dir: str, audit: str) -> None:
    """Child process: serve the model; print the URL; run until SIGTERM."""
    from saeforge.serve.config import ServeConfig
    from saeforge.serve.server import build_state, serve

    cfg = ServeConfig(
        model=model_dir,
        model_name="bench",
        sae=[sae_dir],
        port=0,
        audit_log=audit if audit != "-" else tempfile.mkdtemp(),
        max_batch_size=8,
    )
    state = build_state(cfg)
    if audit == "-":
        state.audit.close()
        state.audit = None
    serve(cfg, state, lambda url: print(url, flush=True))


def client_run(
    url: str, texts: list[str], max_tokens: int, features: bool, clients: int
) -> tuple[int, float]:
    import httpx2 as httpx

    ext = {"saeforge": {"return_features": {"top": 10}}} if features else {}
    counts = [0] * clients

    def one(c: int) -> None:
        with httpx.Client(timeout=300) as http:
            for t in texts:
                body = {"model": "bench", "prompt": t, "max_tokens": max_tokens, "temperature": 0, **ext}
                r = http.post(f"{url}/completions", json=body)
                r.raise_for_status()
                counts[c] += r.json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=one, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.serve_bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few prompts and tokens: checks the harness")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "serve.json")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server and of the bare loop")
    p.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.serve:
        _server_main(*args.serve)
        return
    n_prompts, max_tokens = (2, 4) if args.quick else (8, 48)
    rounds = args.rounds or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_dir, sae_dir = build_assets(root, *((64, 3, 256) if args.quick else ()))
    texts = prompts(n_prompts)
    plain, url_plain = start_server(model_dir, sae_dir, None)
    audited, url_audit = start_server(model_dir, sae_dir, root / "audit")
    best: dict[str, float] = {}

    def keep(name: str, tokens: int, seconds: float) -> None:
        best[name] = max(best.get(name, 0.0), tokens / seconds)

    try:
        client_run(url_plain, texts[:1], max_tokens, False, 1)  # warm-up
        client_run(url_audit, texts[:1], max_tokens, True, 1)
        bare_generate(model_dir, texts[:1], max_tokens)
        for _ in range(rounds):
            keep("bare_generate", *bare_generate(model_dir, texts, max_tokens))
            keep("server_1_client", *client_run(url_plain, texts, max_tokens, False, 1))
            keep("server_features_audit", *client_run(url_audit, texts, max_tokens, True, 1))
            keep("server_8_clients", *client_run(url_plain, texts, max_tokens, False, 8))
    finally:
        for proc in (plain, audited):
            proc.terminate()
            proc.wait(60)
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "prompts": n_prompts,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "tokens_per_s": best,
        "ratios": {
            "server_vs_generate": best["server_1_client"] / best["bare_generate"],
            "features_audit_time_overhead": best["server_1_client"] / best["server_features_audit"] - 1,
            "8_clients_vs_1": best["server_8_clients"] / best["server_1_client"],
        },
    }
    print(f"{'configuration':<28}{'tokens/s':>10}")
    for k, v in best.items():
        print(f"{k:<28}{v:>10.1f}")
    for k, v in res["ratios"].items():
        print(f"{k:<28}{v:>10.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
