"""Run under a Python that has sae-lens and transformer-lens (not saeforge): what SAELens makes of saeforge files.

    python saelens_side.py CASE_DIR

CASE_DIR/case.json: {"saes": [dir, ...], "x": file, "model": HF dir or null, "tokens": file or null}. For each
SAE, `SAE.load_from_disk` encodes x and decodes saeforge's own latents (`<dir>/z_saeforge` in the x file). With
a model, a HookedSAETransformer is built from the Hugging Face GPT-2 weights, processed with the SAE's
`metadata.model_from_pretrained_kwargs`, the SAE is attached with `add_sae` and the cache of one forward pass
over the tokens keeps the SAE's input and reconstruction. Everything goes to CASE_DIR/saelens.safetensors
and CASE_DIR/saelens.json; the saeforge test compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _hooked_model(model_dir: str, processing: dict):
    """HookedTransformer.from_pretrained's steps for an unlisted local GPT-2: config, weight conversion, processing."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn=c.activation_function,
        eps=c.layer_norm_epsilon,
        normalization_type="LN",
        scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx,
        original_architecture="GPT2LMHeadModel",
    )
    model = HookedSAETransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), **processing)
    return model.eval()


def main(case_dir: Path) -> None:
    from sae_lens import SAE

    case = json.loads((case_dir / "case.json").read_text())
    inputs = load_file(case_dir / case["x"])
    out: dict[str, torch.Tensor] = {}
    report: dict = {"saes": {}}
    saes = {}
    for d in case["saes"]:
        sae = SAE.load_from_disk(d).eval()
        saes[d] = sae
        with torch.no_grad():
            out[f"{d}/z"] = sae.encode(inputs["x"])
            out[f"{d}/x_hat"] = sae.decode(inputs[f"{d}/z_saeforge"])
        report["saes"][d] = {"architecture": sae.cfg.architecture(), "hook_name": sae.cfg.metadata.hook_name}
    if case.get("model"):
        tokens = inputs["tokens"]
        for d in case["attach"]:
            sae = saes[d]
            model = _hooked_model(case["model"], dict(sae.cfg.metadata.model_from_pretrained_kwargs or {}))
            hook = sae.cfg.metadata.hook_name
            model.add_sae(sae)
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens)
            report["saes"][d]["attached"] = sorted(model.acts_to_saes)
            for key in ("hook_sae_input", "hook_sae_recons"):
                if f"{hook}.{key}" in cache:
                    out[f"{d}/{key}"] = cache[f"{hook}.{key}"].contiguous()
    save_file({k: v.contiguous() for k, v in out.items()}, case_dir / "saelens.safetensors")
    (case_dir / "saelens.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
