"""Fixtures for the server tests: a tiny GPT-2 with a ReLU SAE and a feature index, and servers on 127.0.0.1:0."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

HOOK = "layers.1.resid_post"
SAE_NAME = "relu32"


def make_sae(out: Path, seed: int = 5, d_in: int = 64, d_sae: int = 32, hook: str = HOOK) -> Path:
    """A random ReLU SAE saved as a directory (unit-norm decoder rows)."""
    from saeforge.sae.base import SAEConfig
    from saeforge.sae.io import save_sae
    from saeforge.sae.standard import StandardSAE

    g = torch.Generator().manual_seed(seed)
    sae = StandardSAE(SAEConfig(architecture="standard", d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.b_enc.copy_(-0.3 * torch.rand(d_sae, generator=g))
        w = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
    return save_sae(sae, out, {"hook_name": hook})


def make_index(out: Path, explanations: dict[int, str]) -> Path:
    from saeforge.interpret.index import build_index
    from saeforge.interpret.records import Interpretation, LatentRecord, TokenContext, save_interpretation

    records = [
        LatentRecord(
            latent=i,
            density=0.01 * (i + 1),
            n_active=1,
            n_rows=100,
            max_activation=1.0,
            mean_activation=0.5,
            hist_hi=1.0,
            hist_counts=[1],
            quantile_edges=[0.0],
            explanation=text,
        )
        for i, text in explanations.items()
    ]
    records[0].top = [
        TokenContext(
            seq=4,
            pos=2,
            activation=7.5,
            start=0,
            token_ids=[1, 2, 3],
            tokens=["the", " court", " held"],
            acts=[0.0, 1.0, 7.5],
        )
    ]
    build_index(records, out)
    save_interpretation(Interpretation(latents=records), out / "latents.json")
    return out


LABELS = {3: "formal legal language", 7: "numbers and dates", 12: "python code"}


@pytest.fixture(scope="session")
def serve_assets(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_assets")
    sae_dir = make_sae(root / SAE_NAME)
    index_dir = make_index(root / "index", LABELS)
    variants = root / "variants.yaml"
    variants.write_text(
        "formal:\n  steer: [{latent: 3, coefficient: 200.0}]\nquiet:\n  clamp: [{latent: 7, value: 0.0}]\n"
    )
    return {
        "model": tiny_model("gpt2"),
        "sae": sae_dir,
        "index": index_dir,
        "variants": variants,
        "root": root,
    }


class ServerThread:
    """A uvicorn server for `state` on 127.0.0.1 (ephemeral port), in a thread of this process."""

    def __init__(self, state):
        import uvicorn

        from saeforge.serve.app import create_app
        from saeforge.serve.server import bind

        self.state = state
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", access_log=False))
        self.server.install_signal_handlers = lambda: None
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                return self
            time.sleep(0.025)
        raise RuntimeError("server did not start within 10 s")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="session")
def start_server():
    """`with start_server(cfg) as srv:` builds the state of a ServeConfig and serves it; srv.url ends in /v1."""
    from saeforge.serve.server import build_state

    def start(cfg):
        return ServerThread(build_state(cfg))

    return start


def config(assets, tmp_path: Path, **overrides):
    from saeforge.serve.config import ServeConfig

    base = dict(
        model=assets["model"],
        sae=[assets["sae"]],
        index=[str(assets["index"])],
        variants=assets["variants"],
        audit_log=tmp_path / "audit",
        port=0,
        model_name="gpt2",
    )
    return ServeConfig(**{**base, **overrides})
