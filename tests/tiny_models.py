"""Tiny, randomly initialised models of every supported family, built offline for tests.

`build_tokenizer(out_dir)` trains a byte-level BPE tokenizer (BOS/EOS/PAD, chat template) on the built-in
corpus; `build_tokenizer(out_dir, style="wordpiece")` a BERT-style WordPiece one ([CLS]/[SEP]/[PAD]/[MASK]/
[UNK]). `build_tiny_model(family, out_dir, tokenizer_dir)` saves a seeded model (hidden size 64, 3 layers)
with its tokenizer as a local Hugging Face directory that `saeforge.models.load_model` loads.
"""

from __future__ import annotations

import json
import shutil
from itertools import islice
from pathlib import Path

FAMILIES = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "bert")
CAUSAL_FAMILIES = FAMILIES[:-1]

D_MODEL = 64
N_LAYERS = 3
VOCAB_SIZE = 768
MAX_POSITIONS = 512
_TRAIN_DOCS = 1500
_SEED = 0

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _training_texts() -> list[str]:
    from saeforge.text import read_texts

    return list(islice(read_texts("builtin:train"), _TRAIN_DOCS))


def build_tokenizer(out_dir: str | Path, style: str = "bpe") -> Path:
    """Trains a tokenizer on the built-in corpus and saves it as a Hugging Face tokenizer directory.

    style "bpe": byte-level BPE with <|bos|>, <|eos|>, <|pad|> and a chat template (causal models);
    style "wordpiece": lower-cased WordPiece with [PAD], [UNK], [CLS], [SEP], [MASK] (BERT).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    if style == "bpe":
        specials = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE,
            special_tokens=list(specials.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        extra = {"chat_template": CHAT_TEMPLATE}
    elif style == "wordpiece":
        specials = {
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        }
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=VOCAB_SIZE, special_tokens=list(specials.values()), show_progress=False
        )
        extra = {}
    else:
        raise ValueError(f"unknown tokenizer style {style!r}; use 'bpe' or 'wordpiece'")
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    if style == "wordpiece":
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS, **specials, **extra)
    fast.save_pretrained(out)
    return out


def _config(family: str, vocab_size: int, special: dict[str, int | None]):
    import transformers as tf

    common = dict(vocab_size=vocab_size, **special)
    llama_like = dict(
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        **common,
    )
    if family == "gpt2":
        return tf.GPT2Config(
            n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_inner=128, n_positions=MAX_POSITIONS, **common
        )
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=D_MODEL,
            intermediate_size=128,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS,
            **common,
        )
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(sliding_window=128, **llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "qwen3":
        return tf.Qwen3Config(head_dim=16, **llama_like)
    if family == "gemma2":
        return tf.Gemma2Config(head_dim=16, sliding_window=128, query_pre_attn_scalar=16, **llama_like)
    if family == "gemma3":
        return tf.Gemma3TextConfig(head_dim=16, sliding_window=128, query_pre_attn_scalar=16, **llama_like)
    if family == "bert":
        return tf.BertConfig(
            hidden_size=D_MODEL,
            intermediate_size=128,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS,
            **common,
        )
    raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")


_MODEL_CLASSES = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "bert": "BertModel",
}


def build_tiny_model(family: str, out_dir: str | Path, tokenizer_dir: str | Path, seed: int = _SEED) -> Path:
    """Saves a seeded random model of FAMILY (config + model.safetensors + tokenizer files) into OUT_DIR.

    Two seeds of one family give two models with the same architecture and tokenizer and different weights
    (a stand-in "base" and "fine-tune" for paired capture).

    BERT needs a WordPiece tokenizer directory (`build_tokenizer(..., style="wordpiece")`), the causal
    families a BPE one.
    """
    import torch
    import transformers as tf
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if (family == "bert") != (tokenizer.cls_token_id is not None):
        raise ValueError(f"family {family!r} needs a {'wordpiece' if family == 'bert' else 'bpe'} tokenizer")
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        **(
            {}
            if family == "bert"
            else {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        ),
    }
    # Padded like real checkpoints: some tokenizer classes add a token (Qwen2Tokenizer adds <|endoftext|>).
    config = _config(family, len(tokenizer) + 64, special)
    torch.manual_seed(seed)
    model = getattr(tf, _MODEL_CLASSES[family])(config).eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    for item in Path(tokenizer_dir).iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)
    (out / "saeforge_tiny.json").write_text(json.dumps({"family": family, "seed": seed}))
    return out
