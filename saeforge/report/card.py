"""The SAE card: `README.md` beside every saved SAE, in the Hugging Face model-card format.

YAML front matter (library, tags, the model and hook, headline metrics) then Markdown: what the SAE is (architecture,
site, model and fingerprint), what it was trained on (corpora and mixture, tokens), how good it is (metrics,
verdict, dead and dense latents), what it is for and not for, and how to load it in saeforge, SAELens and
TransformerLens. `sae_card` renders plain values: the `cfg.json` dict saeforge wrote (its metadata holds the run
card) and, once the SAE has been evaluated, its `metrics.json`. It is what a team files as the SAE's documentation
and what `huggingface-cli upload` publishes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from saeforge.atomic import write_text

CARD_FILENAME = "README.md"
# (metrics.json key, label), in the order the card lists them.
CARD_METRICS = (
    ("fvu", "FVU (fraction of variance unexplained)"),
    ("explained_variance", "explained variance"),
    ("l0", "L0 (active latents per token)"),
    ("ce_loss_score", "CE loss recovered (vs zero ablation)"),
    ("kl_div_score", "KL recovered (vs zero ablation)"),
    ("ce_delta", "CE loss increase with the SAE spliced in"),
    ("dead_fraction", "dead latents (fraction)"),
    ("dense_fraction_10", "latents firing on >10% of tokens"),
    ("cosine", "cosine(x, x_hat)"),
    ("tokens", "held-out tokens evaluated"),
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def _front_matter(cfg: dict, meta: dict, metrics: dict) -> str:
    front = {
        "library_name": "saeforge",
        "tags": ["sparse-autoencoder", "saeforge", "sae_lens", cfg.get("architecture", "sae")],
        "model": meta.get("model"),
        "model_fingerprint": meta.get("model_fingerprint"),
        "hook_name": meta.get("saeforge_hook_name") or meta.get("hook_name"),
        "transformerlens_hook_name": meta.get("hook_name") if meta.get("saeforge_hook_name") else None,
        "architecture": cfg.get("architecture"),
        "d_in": cfg.get("d_in"),
        "d_sae": cfg.get("d_sae"),
        "training_tokens": (meta.get("training") or {}).get("tokens"),
        "verdict": metrics.get("verdict"),
        "metrics": {k: metrics[k] for k, _ in CARD_METRICS if isinstance(metrics.get(k), (int, float))}
        or None,
    }
    front = {k: v for k, v in front.items() if v is not None}
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n"


def _data_section(meta: dict) -> str:
    data = meta.get("data") or {}
    corpora = data.get("corpus") or []
    lines = ["## Training data", ""]
    if corpora:
        lines += ["| source | weight | contexts | tokens |", "| --- | --- | --- | --- |"]
        lines += [
            f"| `{c.get('source')}` | {_fmt(c.get('weight'))} | {_fmt(c.get('contexts'))} | {_fmt(c.get('tokens'))} |"
            for c in corpora
        ]
        lines.append("")
    training = meta.get("training") or {}
    counts = data.get("tokens") or {}
    lines.append(
        _table(
            [
                ("activations", f"`{data['activations']}`" if data.get("activations") else None),
                ("tokenizer", data.get("tokenizer")),
                ("context size", meta.get("context_size")),
                ("preprocessing", data.get("preprocessing")),
                ("special tokens excluded", counts.get("special_excluded")),
                ("activation rows captured", counts.get("rows")),
                ("training tokens", training.get("tokens")),
                ("epochs over the store", data.get("epochs")),
            ]
        )
    )
    return "\n".join(lines)


def _metrics_section(meta: dict, metrics: dict) -> str:
    if metrics:
        rows = [(label, metrics.get(key)) for key, label in CARD_METRICS]
        head = f"Held-out evaluation (`metrics.json`). Verdict: **{metrics.get('verdict', 'not given')}**."
        evidence = metrics.get("verdict_evidence")
        if evidence:
            head += f" Evidence: {evidence}."
        return f"## Metrics\n\n{head}\n\n{_table(rows)}"
    final = meta.get("final_metrics") or {}
    rows = [(k, v) for k, v in final.items() if isinstance(v, (int, float))]
    return (
        "## Metrics\n\nNot evaluated on held-out data yet (`saeforge eval` writes `metrics.json`, with the "
        "verdict and dead/dense latents). Last training record, on training batches:\n\n" + _table(rows)
    )


def _load_section(cfg: dict, meta: dict) -> str:
    hook = meta.get("saeforge_hook_name") or meta.get("hook_name") or "<hook>"
    tl_hook = meta.get("hook_name") if meta.get("saeforge_hook_name") else None
    kwargs = meta.get("model_from_pretrained_kwargs") or {}
    text = [
        "## How to load",
        "",
        "saeforge (any leading shape; `.to(device, dtype)` as for any module):",
        "",
        "```python",
        "import saeforge",
        "",
        'sae = saeforge.load_sae("path/to/this/folder")',
        "z = sae.encode(x)      # [..., d_in] -> [..., d_sae]",
        "x_hat = sae.decode(z)  # [..., d_sae] -> [..., d_in]",
        "```",
        "",
        "SAELens (this folder is in its layout: `cfg.json` + `sae_weights.safetensors`):",
        "",
        "```python",
        "from sae_lens import SAE",
        "",
        'sae = SAE.load_from_disk("path/to/this/folder")',
        "```",
    ]
    if tl_hook:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        text += [
            "",
            f"It attaches at `{tl_hook}` (saeforge's `{hook}`) in a `HookedSAETransformer` loaded with the "
            f"settings under which its hooks hold the activations saeforge captured (`model_from_pretrained_kwargs`): "
            f"`HookedSAETransformer.from_pretrained(name, {args})`, then `model.add_sae(sae)`.",
        ]
    return "\n".join(text)


def sae_card(cfg: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    """README.md text for one SAE. cfg: its cfg.json as a dict; metrics: its metrics.json (None before eval)."""
    meta = cfg.get("metadata") or {}
    metrics = metrics or {}
    hook = meta.get("saeforge_hook_name") or meta.get("hook_name")
    sparsity = meta.get("sparsity") or {}
    name = meta.get("name") or cfg.get("architecture", "sae")
    summary = _table(
        [
            ("architecture", cfg.get("architecture")),
            ("sparsity", sparsity.get("mechanism")),
            ("k", cfg.get("k") or sparsity.get("k")),
            ("d_in → d_sae", f"{cfg.get('d_in')} → {cfg.get('d_sae')}"),
            ("site (saeforge)", f"`{hook}`" if hook else None),
            ("site (TransformerLens)", f"`{meta['hook_name']}`" if meta.get("saeforge_hook_name") else None),
            ("model", f"`{meta['model']}`" if meta.get("model") else None),
            ("model fingerprint", meta.get("model_fingerprint")),
            ("dtype", cfg.get("dtype")),
            ("saeforge version", meta.get("saeforge_version")),
        ]
    )
    use = (
        "## Intended use and limits\n\n"
        "For interpretability work on the model named above, at this site only: reading what its latents respond "
        "to, attributing and steering with them, and measuring what the model represents there. It describes the "
        "activations of that exact model (check the fingerprint) on data like its training corpora; on other "
        "models, sites or very different text its latents and metrics do not carry over. A latent's meaning is "
        "a hypothesis to test (top contexts and judged explanations are evidence, not proof); reconstruction is "
        "lossy (see FVU and CE recovered), so conclusions drawn through the SAE hold for the reconstructed model."
    )
    body = [
        f"# SAE `{name}`: {cfg.get('architecture')} at `{hook}`",
        "",
        "Trained with saeforge on the team's own model and data, offline.",
        "",
        summary,
        "",
        _data_section(meta),
        "",
        _metrics_section(meta, metrics),
        "",
        use,
        "",
        _load_section(cfg, meta),
        "",
    ]
    return _front_matter(cfg, meta, metrics) + "\n" + "\n".join(body)


def write_sae_card(sae_dir: str | Path) -> Path:
    """Writes `sae_dir/README.md` from its cfg.json and, when present, metrics.json; returns the card's path."""
    root = Path(sae_dir)
    cfg = json.loads((root / "cfg.json").read_text())
    metrics_path = root / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    path = root / CARD_FILENAME
    write_text(path, sae_card(cfg, metrics))
    return path
