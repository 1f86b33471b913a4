"""Hook points: naming, recording and splicing activations inside a model's forward pass.

Canonical names, for block i of the model's stack of transformer blocks (0-based):

- `layers.{i}.resid_pre`: the residual stream entering block i (the block's input hidden states);
- `layers.{i}.resid_post`: the residual stream leaving block i (the block's output hidden states);
- `layers.{i}.attn_out`: what the attention sublayer contributes to the residual stream;
- `layers.{i}.mlp_out`: what the MLP sublayer contributes to the residual stream;
- `layers.{i}.mlp_in`: the MLP's input, after the norm in front of it (what a transcoder reads).

For decoder blocks (GPT-2, GPT-NeoX, Llama, Mistral, Qwen2, Qwen3, Gemma2, Gemma3, and other blocks built the
same way) `attn_out` and `mlp_out` are the tensors added to the residual stream, so that
`resid_post = resid_pre + attn_out + mlp_out` in eval mode. That fixes the meaning where families differ:
- GPT-2, GPT-NeoX (parallel or sequential residual), Llama-style: the attention module's output (with its
  output projection) and the MLP module's output;
- Gemma2/Gemma3, whose blocks normalise each sublayer's output before adding it ("sandwich" norms, detected by
  a `post_feedforward_layernorm`): the outputs of `post_attention_layernorm` and `post_feedforward_layernorm`.
BERT blocks are post-LayerNorm: `h = LN1(resid_pre + attn_out)`, `resid_post = LN2(h + mlp_out)`. There
`attn_out` is the output of the attention output projection (`attention.output.dense`) and `mlp_out` that of
the MLP's down projection (`output.dense`), both before the residual add and the LayerNorm.

`mlp_in` is the input of the MLP module, so that `mlp_out = MLP(mlp_in)` (Gemma: `post_feedforward_layernorm(
MLP(mlp_in))`): `ln_2(resid_pre + attn_out)` for GPT-2, `post_attention_layernorm(resid_pre + attn_out)` for
Llama-style blocks and sequential GPT-NeoX, `post_attention_layernorm(resid_pre)` for parallel-residual GPT-NeoX
(attention and MLP both read the block's input), `pre_feedforward_layernorm(resid_pre + attn_out)` for Gemma2/3.
BERT's MLP (`intermediate` then `output.dense`) reads the attention sublayer's normalised output
`h = LN1(resid_pre + attn_out)`: its `mlp_in` is the input of `intermediate`.

Each canonical name may also be given in its TransformerLens spelling (`blocks.{i}.hook_resid_post`, ...;
`saeforge.hook_names`): it resolves to the same HookPoint, named canonically.

Any module path of the model (`model.layers.3.mlp`, as in `model.named_modules()`) names that module's output;
`PATH:input` names its input (the first positional argument, or the `hidden_states` keyword). Outputs that are
tuples (or lists, or ModelOutputs) contribute their first element. Every activation is a Tensor [batch, seq, d].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from saeforge.errors import did_you_mean
from saeforge.hook_names import canonical_hook_name
from saeforge.models.loading import LoadedModel

SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in")

# Where families keep their stack of blocks, relative to the loaded model.
_BLOCK_LISTS = (
    "transformer.h",
    "gpt_neox.layers",
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "encoder.layer",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "layers",
    "h",
)
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_CANONICAL = re.compile(r"layers\.(\d+)\.(\w+)")


class HookError(ValueError):
    """A hook name that does not resolve; the message lists the valid names."""


@dataclass(frozen=True)
class HookPoint:
    """A resolved hook: `module`'s input or output (`io`), inside block `layer` (None when outside any block)."""

    name: str
    module: nn.Module
    io: str
    layer: int | None
    module_path: str


def _unwrap(model: LoadedModel | nn.Module) -> nn.Module:
    return model.model if isinstance(model, LoadedModel) else model


def find_blocks(model: LoadedModel | nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and ModuleList of the model's transformer blocks."""
    root = _unwrap(model)
    for path in _BLOCK_LISTS:
        try:
            blocks = root.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return path, blocks
    raise HookError(
        f"cannot find the transformer blocks of {type(root).__name__} (looked for {', '.join(_BLOCK_LISTS)}); "
        "name hooks by module path instead, e.g. 'model.layers.0.mlp' or 'model.layers.0:input'"
    )


def _child(module: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def _sites(block: nn.Module) -> dict[str, tuple[str, str]]:
    """Canonical site -> (module path relative to the block, io) for one block."""
    sites = {"resid_pre": ("", "input"), "resid_post": ("", "output")}
    bert_attention = getattr(getattr(block, "attention", None), "output", None)
    if isinstance(getattr(bert_attention, "dense", None), nn.Module) and hasattr(block, "intermediate"):
        sites["attn_out"] = ("attention.output.dense", "output")
        sites["mlp_out"] = ("output.dense", "output")
        sites["mlp_in"] = ("intermediate", "input")
        return sites
    has_mlp = isinstance(getattr(block, "mlp", None), nn.Module)
    if hasattr(block, "post_feedforward_layernorm") and hasattr(block, "post_attention_layernorm"):
        sites["attn_out"] = ("post_attention_layernorm", "output")
        sites["mlp_out"] = ("post_feedforward_layernorm", "output")
    else:
        attention = _child(block, _ATTENTION_NAMES)
        if attention is not None:
            sites["attn_out"] = (attention[0], "output")
        if has_mlp:
            sites["mlp_out"] = ("mlp", "output")
    if has_mlp:
        sites["mlp_in"] = ("mlp", "input")
    return sites


def list_hooks(model: LoadedModel | nn.Module) -> list[str]:
    """Every canonical hook name of the model, block by block."""
    _, blocks = find_blocks(model)
    return [f"layers.{i}.{site}" for i, block in enumerate(blocks) for site in SITES if site in _sites(block)]


def _valid_names_message(model: LoadedModel | nn.Module, name: str) -> str:
    try:
        path, blocks = find_blocks(model)
    except HookError as e:
        return str(e)
    n = len(blocks)
    sites = [s for s in SITES if s in _sites(blocks[0])]
    module_names = [p for p, _ in _unwrap(model).named_modules() if p]
    example = next((f"{path}.0.{c}" for c, _ in blocks[0].named_children()), f"{path}.0")
    return (
        f"valid canonical names: layers.{{i}}.{{{','.join(sites)}}} with i in 0..{n - 1} "
        f"(e.g. layers.{n // 2}.resid_post); or any module path, which names that module's output, with "
        f"':input' for its input (e.g. {example} or {path}.0:input; see model.named_modules())"
        + ("." + hint if (hint := did_you_mean(name, list_hooks(model) + module_names, n=3)) else "")
    )


def resolve_hook(model: LoadedModel | nn.Module, name: str | HookPoint) -> HookPoint:
    """Resolves a canonical name or module path (module docstring) to a HookPoint; HookError if unknown."""
    if isinstance(name, HookPoint):
        return name
    root = _unwrap(model)
    given, name = name, canonical_hook_name(name)
    match = _CANONICAL.fullmatch(name)
    if match:
        layer, site = int(match.group(1)), match.group(2)
        path, blocks = find_blocks(model)
        if layer >= len(blocks):
            raise HookError(
                f"hook {given!r}: layer {layer} does not exist, the model has {len(blocks)} blocks (0..{len(blocks) - 1}); "
                + _valid_names_message(model, name)
            )
        sites = _sites(blocks[layer])
        if site not in sites:
            raise HookError(f"hook {given!r}: unknown site {site!r}; " + _valid_names_message(model, name))
        rel, io = sites[site]
        module_path = f"{path}.{layer}" + (f".{rel}" if rel else "")
        return HookPoint(name, root.get_submodule(module_path), io, layer, module_path)
    module_path, _, suffix = name.partition(":")
    if suffix not in ("", "input", "output"):
        raise HookError(f"hook {name!r}: the suffix after ':' must be 'input' or 'output'")
    try:
        module = root.get_submodule(module_path) if module_path else None
    except AttributeError:
        module = None
    if module is None or module is root:
        raise HookError(f"unknown hook {name!r}; " + _valid_names_message(model, name))
    return HookPoint(name, module, suffix or "output", _layer_of(model, module_path), module_path)


def _layer_of(model: LoadedModel | nn.Module, module_path: str) -> int | None:
    try:
        path, _ = find_blocks(model)
    except HookError:
        return None
    match = re.match(re.escape(path) + r"\.(\d+)(\.|$)", module_path)
    return int(match.group(1)) if match else None


def _first_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    if isinstance(value, dict) and value:
        return _first_tensor(next(iter(value.values())))
    raise HookError(f"expected a tensor (or a tuple starting with one), got {type(value).__name__}")


def _input_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return _first_tensor(args[0])
    if "hidden_states" in kwargs:
        return _first_tensor(kwargs["hidden_states"])
    raise HookError("the module was called without positional arguments or a `hidden_states` keyword")


class _StopForward(Exception):
    """Raised from a hook to cut the forward pass once every hooked activation is recorded."""


@contextmanager
def record(
    model: LoadedModel | nn.Module,
    hooks: Sequence[str | HookPoint],
    stop_after_deepest: bool = True,
    detach: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Records activations during the forward pass run inside the block: yields {hook name: Tensor [B, T, d]}.

    With `stop_after_deepest`, the forward is cut (and the block exited quietly) after the deepest hooked
    block has run, when every hook lies inside a block; code after the forward call in the block is skipped.
    Hooks are removed on exit, also on error. A hook called more than once keeps the last call's activation.
    """
    root = _unwrap(model)
    points = [resolve_hook(model, h) for h in hooks]
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise HookError(f"hook names repeat: {names}")
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def recorder(point: HookPoint):
        def keep(t: torch.Tensor) -> None:
            acts[point.name] = t.detach() if detach else t

        if point.io == "input":
            return point.module.register_forward_pre_hook(
                lambda _m, args, kwargs: keep(_input_tensor(args, kwargs)), with_kwargs=True
            )
        return point.module.register_forward_hook(lambda _m, _args, out: keep(_first_tensor(out)))

    try:
        for point in points:
            handles.append(recorder(point))
        layers = [p.layer for p in points]
        if stop_after_deepest and points and None not in layers:
            _, blocks = find_blocks(root)

            def stop(_m, _args, _out):
                raise _StopForward

            handles.append(blocks[max(layers)].register_forward_hook(stop))
        try:
            yield acts
        except _StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()


def _forward(loaded: LoadedModel | nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    root = _unwrap(loaded)
    kwargs = {"input_ids": input_ids}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if getattr(getattr(root, "config", None), "use_cache", False):
        kwargs["use_cache"] = False
    return root(**kwargs)


def run_hooks(
    loaded: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    hooks: Sequence[str | HookPoint] = (),
    stop_after_deepest: bool = True,
) -> dict[str, torch.Tensor]:
    """One no-grad forward pass over input_ids LongTensor [B, T]; returns {hook name: Tensor [B, T, d]}.

    The result is keyed by the names as given (a TransformerLens spelling stays one). The forward stops after
    the deepest hooked block when `stop_after_deepest` (see `record`).
    """
    if not hooks:
        raise HookError("run_hooks needs at least one hook")
    points = [resolve_hook(loaded, h) for h in hooks]
    with torch.no_grad(), record(loaded, points, stop_after_deepest) as acts:
        _forward(loaded, input_ids, attention_mask)
    missing = [p.name for p in points if p.name not in acts]
    if missing:
        raise HookError(
            f"hooks {missing} never ran during the forward pass; is the module used by forward()?"
        )
    return {(h if isinstance(h, str) else h.name): acts[p.name] for h, p in zip(hooks, points, strict=True)}


def _check_shape(new: torch.Tensor, old: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(new, torch.Tensor) or new.shape != old.shape:
        shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(f"splice fn at {name!r} must return a tensor shaped {tuple(old.shape)}, got {shape}")
    return new


def _replace_first(value, fn: Callable[[torch.Tensor], torch.Tensor], name: str):
    if isinstance(value, torch.Tensor):
        return _check_shape(fn(value), value, name)
    if isinstance(value, (tuple, list)) and value:
        return type(value)([_replace_first(value[0], fn, name), *value[1:]])
    raise HookError(f"cannot splice {name!r}: the module returned {type(value).__name__}")


@contextmanager
def splice(
    loaded: LoadedModel | nn.Module, hook: str | HookPoint, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[HookPoint]:
    """While the block runs, every forward replaces the hook's activation `act` [B, T, d] by `fn(act)`.

    The splice is registered ahead of any other hook on the module (`prepend=True`), so hooks registered
    on the same module, such as `record`'s, see the spliced activation. Removed on exit, also on error.
    """
    point = resolve_hook(loaded, hook)
    if point.io == "input":

        def pre(_m, args, kwargs):
            if args:
                return (_replace_first(args[0], fn, point.name), *args[1:]), kwargs
            if "hidden_states" in kwargs:
                return args, {
                    **kwargs,
                    "hidden_states": _replace_first(kwargs["hidden_states"], fn, point.name),
                }
            raise HookError(
                f"cannot splice {point.name!r}: the module got no positional input or hidden_states"
            )

        handle = point.module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
    else:
        handle = point.module.register_forward_hook(
            lambda _m, _args, out: _replace_first(out, fn, point.name), prepend=True
        )
    try:
        yield point
    finally:
        handle.remove()
