"""Building a server from its settings (`ServeConfig`), and running it under uvicorn.

`build_state` loads the model,
SAEs, feature indexes, variants and keys and opens the audit log; `serve` binds the socket and runs uvicorn
until SIGTERM/SIGINT, then stops accepting, lets in-flight requests finish within `shutdown_timeout` seconds
and closes the audit log (every queued record written and fsynced).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

import yaml

from saeforge.serve.audit import AuditLog
from saeforge.serve.auth import APIKeys
from saeforge.serve.backend import HFBackend
from saeforge.serve.batcher import Batcher
from saeforge.serve.config import ServeConfig
from saeforge.serve.features import load_labels
from saeforge.serve.saes import ServedSAE, sae_sha256
from saeforge.serve.schemas import load_variants
from saeforge.serve.state import ServerState


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: ServeConfig) -> None:
    if cfg.api_keys is None and not cfg.insecure_no_auth and not is_loopback(cfg.host):
        raise ValueError(
            f"refusing to listen on {cfg.host} without API keys: give --api-keys FILE, bind 127.0.0.1, or pass "
            "--insecure-no-auth to serve anyone who can reach the port"
        )


def from_run_dir(run_dir: Path) -> dict:
    """model, sae and index of a `saeforge run` output folder (config.yaml, saes/<hook>/<name>/)."""
    from saeforge.models import builtin_example_model

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{run_dir} is not a `saeforge run` folder: it has no config.yaml")
    name = str((yaml.safe_load(cfg_path.read_text()) or {}).get("model", ""))
    # "builtin" is how a run config names the demo MiniLM (saeforge.pipeline.BUILTIN_MODEL).
    model = builtin_example_model() if name == "builtin" else Path(name).expanduser()
    saes = sorted(p.parent for p in (run_dir / "saes").glob("*/*/cfg.json"))
    if not saes:
        raise ValueError(f"{run_dir}/saes holds no trained SAE (saes/<hook>/<name>/cfg.json)")
    index = []
    for s in saes:
        for cand in (s, run_dir / "interpret" / s.parent.name / s.name):
            if (cand / "features.sqlite").is_file():
                index.append(f"{_sae_names(saes)[s]}={cand}")
                break
    return {"model": model, "sae": saes, "index": index}


def _sae_names(paths: list[Path]) -> dict[Path, str]:
    """An SAE's name is its directory's name; names that repeat are prefixed by their parent's."""
    names = [p.name for p in paths]
    return {p: (p.name if names.count(p.name) == 1 else f"{p.parent.name}.{p.name}") for p in paths}


def _load_saes(cfg: ServeConfig, loaded, device: str) -> dict[str, ServedSAE]:
    from saeforge.models import resolve_hook
    from saeforge.sae import load_sae

    saes = {}
    for path, name in _sae_names(list(cfg.sae)).items():
        sae = load_sae(path, device=device)
        hook = sae.cfg.metadata.get("hook_name")
        if not hook:
            raise ValueError(
                f"--sae {path}: cfg.json names no hook_name, so the server cannot know where it reads"
            )
        resolve_hook(loaded, hook)
        if sae.d_in != loaded.d_model and hook.endswith(("resid_pre", "resid_post")):
            raise ValueError(
                f"--sae {path}: d_in={sae.d_in} but the model's residual width is {loaded.d_model}"
            )
        saes[name] = ServedSAE(name, sae, hook, sae_sha256(path), Path(path))
    for i, spec in enumerate(cfg.index):
        name, sep, folder = spec.partition("=")
        if not sep:
            if i >= len(saes):
                raise ValueError(f"--index {spec}: there is no --sae #{i + 1} to pair it with; use NAME=DIR")
            name, folder = list(saes)[i], spec
        if name not in saes:
            raise ValueError(f"--index {spec}: no served SAE is named {name!r} (served: {sorted(saes)})")
        saes[name].index = Path(folder)
        saes[name].labels = load_labels(Path(folder))
    return saes


def build_state(cfg: ServeConfig) -> ServerState:
    """Loads everything the server needs; errors name the option to fix."""
    from saeforge.models import load_model

    check_exposure(cfg)
    keys = APIKeys.from_file(cfg.api_keys) if cfg.api_keys is not None else None
    from saeforge.device import resolve_device

    device = str(resolve_device(cfg.device))
    loaded = load_model(cfg.model, dtype=cfg.dtype, device=device, device_map=cfg.device_map)
    if cfg.device_map is not None:
        device = str(loaded.device)
    saes = _load_saes(cfg, loaded, device)
    variants = load_variants(cfg.variants, saes, cfg.max_coefficient) if cfg.variants else {}
    backend = HFBackend(loaded, saes)
    audit = AuditLog(cfg.audit_log, max_bytes=cfg.audit_max_bytes, max_delay_s=cfg.audit_max_delay_ms / 1000)
    return ServerState(
        model_name=cfg.model_name or backend.name,
        backend=backend,
        batcher=Batcher(backend, cfg.max_batch_size),
        saes=saes,
        variants=variants,
        keys=keys,
        audit=audit,
        audit_text=cfg.audit_text,
        audit_features=cfg.audit_features,
        limits=cfg,
        model_dir=loaded.path,
    )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a graceful stop on SIGTERM/SIGINT ends the process with status 0
        (uvicorn re-raises the signal after shutting down, which would report death by signal)."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            getattr(self, "_captured_signals", []).clear()

    return Server


def serve(cfg: ServeConfig, state: ServerState, on_ready: Callable[[str], None] = lambda url: None) -> None:
    """Runs the server until SIGTERM/SIGINT; `on_ready(url)` is called once the socket listens."""
    import uvicorn

    from saeforge.serve.app import create_app

    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"
    config = uvicorn.Config(
        create_app(state),
        log_level="warning",
        timeout_graceful_shutdown=cfg.shutdown_timeout,
        access_log=False,
    )
    server = _server_class()(config)
    on_ready(url)
    server.run(sockets=[sock])
