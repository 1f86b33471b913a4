"""The SAE card (README.md): Hugging Face front matter + Markdown, from plain cfg.json and metrics.json values."""

from __future__ import annotations

import json

import yaml

from saeforge.report.card import sae_card, write_sae_card

CFG = {
    "architecture": "topk",
    "d_in": 64,
    "d_sae": 1024,
    "dtype": "float32",
    "k": 16,
    "metadata": {
        "name": "topk-k16",
        "hook_name": "blocks.3.hook_resid_post",
        "saeforge_hook_name": "layers.3.resid_post",
        "model_from_pretrained_kwargs": {"fold_ln": False, "center_writing_weights": False},
        "model": "/models/team-lm",
        "model_fingerprint": "sha256:abc123",
        "sparsity": {"mechanism": "top-k latents per token", "k": 16},
        "training": {"tokens": 2_000_000, "steps": 488},
        "context_size": 128,
        "data": {
            "activations": "acts/layers.3.resid_post",
            "corpus": [
                {"source": "wiki.jsonl", "weight": 0.7, "contexts": 700, "tokens": 89_600},
                {"source": "code.txt", "weight": 0.3, "contexts": 300, "tokens": 38_400},
            ],
            "tokenizer": "/models/team-lm",
            "tokens": {"special_excluded": 1000, "rows": 127_000},
        },
        "final_metrics": {"fvu": 0.31, "l0": 16.0},
        "saeforge_version": "0.1.0",
    },
}
METRICS = {
    "fvu": 0.2113,
    "explained_variance": 0.7887,
    "l0": 16.0,
    "ce_loss_score": 0.9412,
    "dead_fraction": 0.0125,
    "dense_fraction_10": 0.002,
    "tokens": 50000,
    "verdict": "good",
    "verdict_evidence": "fvu 0.211 <= 0.3",
}


def _split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


def test_card_before_evaluation_shows_training_metrics_and_says_so():
    front, body = _split(sae_card(CFG))
    assert front["library_name"] == "saeforge" and "sparse-autoencoder" in front["tags"]
    assert front["hook_name"] == "layers.3.resid_post"
    assert front["transformerlens_hook_name"] == "blocks.3.hook_resid_post"
    assert front["model_fingerprint"] == "sha256:abc123" and front["training_tokens"] == 2_000_000
    assert "verdict" not in front
    assert body.startswith("\n# SAE `topk-k16`: topk at `layers.3.resid_post`")
    assert "Not evaluated on held-out data yet" in body and "| fvu | 0.31 |" in body
    for line in ("| `wiki.jsonl` | 0.7 | 700 | 89600 |", "| `code.txt` | 0.3 | 300 | 38400 |"):
        assert line in body
    assert "| model fingerprint | sha256:abc123 |" in body and "| d_in → d_sae | 64 → 1024 |" in body


def test_card_after_evaluation_has_verdict_metrics_use_and_loading():
    front, body = _split(sae_card(CFG, METRICS))
    assert front["verdict"] == "good"
    assert front["metrics"] == {k: METRICS[k] for k in front["metrics"]}
    assert set(front["metrics"]) >= {"fvu", "l0", "ce_loss_score", "dead_fraction", "dense_fraction_10"}
    assert "Verdict: **good**. Evidence: fvu 0.211 <= 0.3." in body
    assert "| FVU (fraction of variance unexplained) | 0.2113 |" in body
    assert "| dead latents (fraction) | 0.0125 |" in body
    assert "## Intended use and limits" in body
    assert 'saeforge.load_sae("path/to/this/folder")' in body and "SAE.load_from_disk" in body
    assert "fold_ln=False, center_writing_weights=False" in body and "`blocks.3.hook_resid_post`" in body


def test_card_without_a_transformerlens_site_or_corpus(tmp_path):
    cfg = {
        "architecture": "standard",
        "d_in": 8,
        "d_sae": 32,
        "metadata": {"hook_name": "model.layers.0.mlp"},
    }
    front, body = _split(sae_card(cfg))
    assert front["hook_name"] == "model.layers.0.mlp" and "transformerlens_hook_name" not in front
    assert "HookedSAETransformer" not in body and "site (TransformerLens)" not in body
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    path = write_sae_card(tmp_path)
    assert path == tmp_path / "README.md" and _split(path.read_text())[0]["verdict"] == "good"
