"""One batch of sequences through a Hugging Face causal LM: prefill, then token-by-token decode with the KV cache.

Per-row steering: every SAE a row edits or reads gets one splice at its hook for the batch (`saeforge.models.
splice`), which changes only the rows that ask for it. A row's steering delta is sum_i coefficient_i * W_dec[i]
added to its own row of the activation [B, T, d]; other rows get nothing added (not even a zero), so a row
with no edits runs the plain model, and a steered row the operations `saeforge steer` runs
(`x + coefficient * W_dec[latent]`): alone in a batch, their tokens equal `generate()`'s (tested), and beside
other rows they differ from that only by the float rounding of batched matmuls.

Prompts are left-padded; position ids count real tokens only, so a padded row sees the positions it would see
alone. Finished rows stay in the batch until every row is done, but emit nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import torch
from torch import Tensor

from saeforge.models import LoadedModel, splice
from saeforge.serve.rows import FeatureReadout, Finished, Row
from saeforge.serve.saes import ServedSAE
from saeforge.serve.text_stream import TextStream


class _SAEHook:
    """The splice of one SAE for one batch: clamps, then steering, of the rows that ask; then feature read-out."""

    def __init__(self, served: ServedSAE, rows: Sequence[Row], readout: list[int], per_token: bool):
        sae = served.sae
        self.sae = sae
        self.name = name = served.name
        w_dec = sae.W_dec.detach()
        self.steer: dict[int, Tensor] = {}
        self.clamp: dict[int, list[tuple[int, float]]] = {}
        for b, row in enumerate(rows):
            adds = [s for s in row.edits.steer if s.sae == name]
            if adds:
                delta = adds[0].coefficient * w_dec[adds[0].latent]
                for s in adds[1:]:
                    delta = delta + s.coefficient * w_dec[s.latent]
                self.steer[b] = delta
            clamps = [(c.latent, c.value) for c in row.edits.clamp if c.sae == name]
            if clamps:
                self.clamp[b] = clamps
        self.readout = readout
        self.per_token = per_token
        n, d_sae = len(readout), sae.d_sae
        self.max = torch.zeros(n, d_sae)
        self.sum = torch.zeros(n, d_sae, dtype=torch.float64)
        self.count = torch.zeros(n)
        self.last = torch.zeros(n, d_sae)
        self.valid: Tensor | None = None  # [B, T] bool: positions of this forward that count, set by the loop

    def _encode(self, x: Tensor) -> Tensor:
        w = self.sae.W_enc
        return self.sae.encode(x.to(device=w.device, dtype=w.dtype))

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            if self.clamp or self.steer:
                x = x.clone()
            for b, clamps in self.clamp.items():
                z = self._encode(x[b])
                delta = 0
                for latent, value in clamps:
                    delta = delta + (value - z[..., latent]).unsqueeze(-1) * self.sae.W_dec[latent]
                x[b] = x[b] + delta.to(device=x.device, dtype=x.dtype)
            for b, delta in self.steer.items():
                x[b] = x[b] + delta.to(device=x.device, dtype=x.dtype)
            if self.readout:
                z = self._encode(x[self.readout]).float().cpu()  # [R, T, d_sae]
                valid = self.valid[self.readout].cpu()  # [R, T]
                zm = z * valid.unsqueeze(-1)
                self.max = torch.maximum(self.max, zm.amax(1))
                self.sum += zm.sum(1, dtype=torch.float64)
                self.count += valid.sum(1)
                self.last = z[:, -1]
        return x

    def summary(self, r: int, top: int) -> list[tuple[int, float, float]]:
        vals, ids = self.max[r].topk(min(top, self.max.shape[1]))
        mean = self.sum[r] / max(float(self.count[r]), 1.0)
        return [(int(i), float(v), float(mean[i])) for v, i in zip(vals, ids, strict=True) if v > 0]

    def token_top(self, r: int, top: int) -> list[tuple[int, float]]:
        vals, ids = self.last[r].topk(min(top, self.last.shape[1]))
        return [(int(i), float(v)) for v, i in zip(vals, ids, strict=True) if v > 0]


def _sample(logits: Tensor, rows: Sequence[Row], generators: list[torch.Generator | None]) -> list[int]:
    """logits [B, V] -> one token per row: argmax at temperature 0, else nucleus sampling with the row's RNG."""
    out = []
    for b, row in enumerate(rows):
        s = row.sampling
        if s.temperature == 0:
            out.append(int(logits[b].argmax()))
            continue
        probs = torch.softmax(logits[b].double().cpu() / s.temperature, -1)  # the rows' RNGs live on the CPU
        if s.top_p < 1:
            p_sorted, order = probs.sort(descending=True)
            keep = p_sorted.cumsum(0) - p_sorted < s.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], p_sorted[keep])
        out.append(int(torch.multinomial(probs, 1, generator=generators[b])))
    return out


def _eos_ids(loaded: LoadedModel) -> set[int]:
    ids = set()
    for source in (
        loaded.tokenizer.eos_token_id,
        getattr(loaded.model.generation_config, "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids


def _generators(rows: Sequence[Row]) -> list[torch.Generator | None]:
    gens = []
    for row in rows:
        if row.sampling.temperature == 0:
            gens.append(None)
            continue
        g = torch.Generator()
        if row.sampling.seed is None:
            g.seed()
        else:
            g.manual_seed(row.sampling.seed)
        gens.append(g)
    return gens


def _install_hooks(
    stack: ExitStack, loaded: LoadedModel, saes: dict[str, ServedSAE], rows: Sequence[Row]
) -> list[_SAEHook]:
    """One splice per SAE that some row edits or reads; none at all for a batch of plain rows."""
    hooks = []
    readout = [b for b, r in enumerate(rows) if r.features_top > 0]
    for served in saes.values():
        edits = any(e.sae == served.name for r in rows for e in (*r.edits.steer, *r.edits.clamp))
        if readout or edits:
            hook = _SAEHook(served, rows, readout, any(rows[b].per_token for b in readout))
            hooks.append(hook)
            stack.enter_context(splice(loaded, served.hook, hook))
    return hooks


def _finish(rows: Sequence[Row], streams, reasons, lengths, hooks, per_token) -> None:
    for b, row in enumerate(rows):
        tail = streams[b].flush()
        if tail:
            row.on_text(tail)
        features = []
        for h, hook in enumerate(hooks):
            if b in hook.readout:
                r = hook.readout.index(b)
                features.append(
                    FeatureReadout(
                        sae=hook.name,
                        top=hook.summary(r, row.features_top),
                        per_token=per_token.get((h, b), []) if row.per_token else [],
                    )
                )
        row.on_finish(Finished(streams[b].ids, streams[b].text, reasons[b] or "length", lengths[b], features))


@torch.no_grad()
def generate_batch(loaded: LoadedModel, saes: dict[str, ServedSAE], rows: Sequence[Row]) -> None:
    """Generates every row to completion, calling each row's `on_text` per new piece of text and `on_finish`."""
    device = loaded.device
    B = len(rows)
    lengths = [len(r.prompt_ids) for r in rows]
    T = max(lengths)
    pad = loaded.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    input_ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, T - lengths[b] :] = torch.tensor(r.prompt_ids)
        mask[b, T - lengths[b] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    eos = _eos_ids(loaded)
    streams = [TextStream(loaded.tokenizer, r.sampling.stop) for r in rows]
    generators = _generators(rows)
    done = [False] * B
    reasons = [""] * B
    with ExitStack() as stack:
        hooks = _install_hooks(stack, loaded, saes, rows)
        per_token: dict[tuple[int, int], list[list[tuple[int, float]]]] = {}
        cache: dict = {}
        step_ids, step_mask, step_pos = input_ids, mask, positions
        full_mask = mask
        for _ in range(max(r.sampling.max_tokens for r in rows)):
            active = torch.tensor([not d for d in done]).unsqueeze(1)
            for hook in hooks:
                hook.valid = step_mask.bool() & active
            out = loaded.model(
                input_ids=step_ids.to(device),
                attention_mask=full_mask.to(device),
                position_ids=step_pos.to(device),
                use_cache=True,
                **cache,
            )
            # transformers 5 names the KV cache `cache`; earlier versions `past_key_values`.
            cache = {"cache": out.cache} if "cache" in out else {"past_key_values": out.past_key_values}
            chosen = _sample(out.logits[:, -1].float(), rows, generators)
            for b, row in enumerate(rows):
                if done[b]:
                    continue
                for h, hook in enumerate(hooks):
                    if hook.per_token and b in hook.readout:
                        r = hook.readout.index(b)
                        per_token.setdefault((h, b), []).append(hook.token_top(r, row.features_top))
                delta = streams[b].push(chosen[b])
                if delta:
                    row.on_text(delta)
                if row.cancelled.is_set():
                    done[b], reasons[b] = True, "cancelled"
                elif chosen[b] in eos or streams[b].stopped:
                    done[b], reasons[b] = True, "stop"
                elif len(streams[b].ids) >= row.sampling.max_tokens:
                    done[b], reasons[b] = True, "length"
            if all(done):
                break
            step_ids = torch.tensor(chosen).unsqueeze(1)
            step_mask = torch.ones(B, 1, dtype=torch.long)
            full_mask = torch.cat([full_mask, step_mask], 1)
            step_pos = step_pos[:, -1:] + 1
    _finish(rows, streams, reasons, lengths, hooks, per_token)
