"""The generation backend: one small interface, and its Hugging Face implementation.

A backend tokenises (and applies the chat template), runs a batch of `Row`s to completion with per-row steering
and feature read-out, and embeds texts for encoder models. The server and the batcher see only this interface,
so a vLLM backend can be added beside `HFBackend` without touching them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from saeforge.models import LoadedModel
from saeforge.serve.rows import Row
from saeforge.serve.saes import RequestError, ServedSAE


class Backend(Protocol):
    name: str  # the model id it serves
    kind: str  # "causal" (generates) or "encoder" (embeds)
    fingerprint: str
    max_positions: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of a completion prompt."""

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (special tokens skipped)."""

    def chat(self, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
        """A chat rendered through the tokenizer's chat template, and its token ids (RequestError 400 without
        a template)."""

    def generate(self, rows: Sequence[Row]) -> None:
        """Runs `rows` as one batch to completion (each row's callbacks report its text and its end)."""

    def embed(self, texts: list[str]) -> tuple[Tensor, list[int]]:
        """Sentence embeddings [N, d] (float32) and each text's token count."""


class HFBackend:
    """A local Hugging Face model (`saeforge.models.load_model`) with the SAEs it serves."""

    def __init__(self, loaded: LoadedModel, saes: dict[str, ServedSAE]):
        self.loaded = loaded
        self.saes = saes
        self.name = loaded.path.name
        self.kind = loaded.kind
        self.fingerprint = loaded.fingerprint
        cfg = loaded.model.config.get_text_config()
        self.max_positions = next(
            (
                int(v)
                for v in (getattr(cfg, a, None) for a in ("max_position_embeddings", "n_positions"))
                if isinstance(v, int)
            ),
            None,
        )

    def encode(self, text: str) -> list[int]:
        return list(self.loaded.tokenizer(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(ids, skip_special_tokens=True)

    def chat(self, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
        tok = self.loaded.tokenizer
        if not getattr(tok, "chat_template", None):
            raise RequestError(
                f"the model {self.loaded.path.name!r} has no chat template (tokenizer_config.json has no "
                "chat_template): use /v1/completions with a plain prompt, or add a chat template to the model",
                param="messages",
            )
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, list(tok(text, add_special_tokens=False)["input_ids"])

    def generate(self, rows: Sequence[Row]) -> None:
        from saeforge.serve.hf_generate import generate_batch

        generate_batch(self.loaded, self.saes, rows)

    def _sentence_config(self) -> tuple[int | None, bool]:
        """(max_seq_length, normalize) from a sentence-transformers layout in the model directory, if any."""
        root = self.loaded.path
        max_len = None
        if (root / "sentence_bert_config.json").is_file():
            max_len = json.loads((root / "sentence_bert_config.json").read_text()).get("max_seq_length")
        normalize = True
        if (root / "modules.json").is_file():
            modules = json.loads((root / "modules.json").read_text())
            normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        return max_len, normalize

    @torch.no_grad()
    def embed(self, texts: list[str]) -> tuple[Tensor, list[int]]:
        """Mean of the last hidden states over real tokens, then unit L2 norm: sentence-transformers' pipeline
        Transformer -> Pooling(mean) -> Normalize, with its max_seq_length (Normalize as modules.json says;
        a model without modules.json is normalised, as OpenAI embeddings are)."""
        if self.kind != "encoder":
            raise RequestError(
                f"{self.loaded.path.name!r} is a causal LM: /v1/embeddings serves encoder models (e.g. MiniLM)",
                param="model",
            )
        tok = self.loaded.tokenizer
        max_len, normalize = self._sentence_config()
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        enc = {k: v.to(self.loaded.device) for k, v in enc.items()}
        hidden = self.loaded.model(**enc).last_hidden_state.float()  # [N, T, d]
        mask = enc["attention_mask"].unsqueeze(-1).float()  # [N, T, 1]
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if normalize:
            mean = torch.nn.functional.normalize(mean, dim=-1)
        return mean.cpu(), enc["attention_mask"].sum(1).tolist()
