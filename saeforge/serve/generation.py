"""/v1/completions and /v1/chat/completions: requests become `Row`s for the batcher; events come back to asyncio.

A request with P prompts and n choices queues P * n rows (choice index p * n + i; with a `seed`, choice i
samples with seed + i). Greedy decoding is `temperature: 0`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from saeforge.serve.context import RequestContext
from saeforge.serve.guard import commit, error_body
from saeforge.serve.rows import Finished, Row, Sampling
from saeforge.serve.saes import RequestError
from saeforge.serve.schemas import ChatRequest, CompletionRequest, Extension, parse, to_edits
from saeforge.serve.state import ServerState


async def body_json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None


def _check_bounds(state: ServerState, prompt_ids: list[list[int]], max_tokens: int, n: int) -> None:
    lim = state.limits
    if state.backend.kind != "causal":
        raise RequestError(
            f"{state.model_name!r} is an encoder model: it serves /v1/embeddings, not text generation",
            param="model",
        )
    if max_tokens > lim.max_tokens:
        raise RequestError(
            f"max_tokens {max_tokens} exceeds the server's limit of {lim.max_tokens}", param="max_tokens"
        )
    if n * len(prompt_ids) > lim.max_n:
        raise RequestError(
            f"n={n} choices for {len(prompt_ids)} prompt(s) exceeds the server's limit of {lim.max_n} sequences",
            param="n",
        )
    for ids in prompt_ids:
        if not ids:
            raise RequestError("the prompt is empty", param="prompt")
        if len(ids) > lim.max_prompt_tokens:
            raise RequestError(
                f"the prompt has {len(ids)} tokens, the server's limit is {lim.max_prompt_tokens}",
                param="prompt",
            )
        room = state.backend.max_positions
        if room is not None and len(ids) + max_tokens > room:
            raise RequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context of {room} "
                "tokens: shorten the prompt or lower max_tokens",
                param="max_tokens",
            )


def _features_json(
    state: ServerState, finished: dict[int, Finished], top: int, per_token: bool
) -> list[dict]:
    out = []
    for idx, fin in sorted(finished.items()):
        for fr in fin.features:
            labels = state.saes[fr.sae].labels
            entry: dict[str, Any] = {
                "index": idx,
                "sae": fr.sae,
                "top": [
                    {"latent": i, "max": mx, "mean": mean, "label": labels.get(i)}
                    for i, mx, mean in fr.top[:top]
                ],
            }
            if per_token:
                entry["tokens"] = [
                    {
                        "token": state.backend.decode([tid]),
                        "features": [
                            {"latent": i, "activation": a, "label": labels.get(i)} for i, a in feats[:top]
                        ],
                    }
                    for tid, feats in zip(fin.token_ids, fr.per_token, strict=False)
                ]
            out.append(entry)
    return out


class Generation:
    """One generation request in flight: its rows, their events, and what it reports."""

    def __init__(
        self,
        state: ServerState,
        ctx: RequestContext,
        req,
        prompts: list[str],
        ids: list[list[int]],
        chat: bool,
    ):
        self.state, self.ctx, self.req, self.chat = state, ctx, req, chat
        variant, variant_edits = state.resolve_model(req.model)
        ext = req.saeforge or Extension()
        if ext.return_features is not None and not state.saes:
            raise RequestError(
                "saeforge.return_features: this server serves no SAE; start it with --sae DIR",
                param="saeforge.return_features",
            )
        edits = variant_edits + to_edits(ext, state.saes, state.limits.max_coefficient)
        ctx.model, ctx.variant, ctx.stream = req.model, variant, req.stream
        ctx.steering = edits.as_json() if edits else None
        ctx.prompt = prompts[0] if len(prompts) == 1 else prompts
        default = state.limits.max_tokens if chat else 16
        max_tokens = (req.max_completion_tokens if chat else None) or req.max_tokens or default
        _check_bounds(state, ids, max_tokens, req.n)
        ctx.prompt_tokens = sum(len(i) for i in ids)
        self.top = ext.return_features.top if ext.return_features else 0
        self.per_token = bool(ext.return_features and ext.return_features.per_token)
        audit_top = state.audit_features if state.audit is not None else 0
        stops = req.stops()
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.rows = []
        for p, prompt_ids in enumerate(ids):
            for i in range(req.n):
                seed = None if req.seed is None else req.seed + i
                idx = p * req.n + i
                self.rows.append(
                    Row(
                        prompt_ids,
                        Sampling(max_tokens, req.temperature, req.top_p, seed, stops),
                        edits,
                        features_top=max(self.top, audit_top) if state.saes else 0,
                        per_token=self.per_token,
                        on_text=lambda d, idx=idx: self._put(idx, "text", d),
                        on_finish=lambda f, idx=idx: self._put(idx, "finish", f),
                        on_error=lambda e, idx=idx: self._put(idx, "error", e),
                    )
                )
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.finished: dict[int, Finished] = {}
        ctx.on_close.append(lambda: [r.cancelled.set() for r in self.rows])

    def _put(self, idx: int, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (idx, kind, value))

    async def next_event(self):
        """(idx, kind, value) of the next event that matters; a row's first end (finish or error) wins."""
        while True:
            idx, kind, value = await self.events.get()
            if idx in self.finished:
                continue
            if kind == "error":
                raise RuntimeError(f"generation failed: {value}") from value
            if kind == "finish":
                self.finished[idx] = value
            return idx, kind, value

    def _report(self) -> dict[str, Any] | None:
        ctx, state = self.ctx, self.state
        fins = [self.finished[i] for i in range(len(self.rows))]
        ctx.completions = [f.text for f in fins]
        ctx.completion_tokens = sum(len(f.token_ids) for f in fins)
        ctx.features = [
            {k: v for k, v in e.items() if k != "tokens"}
            for e in _features_json(state, self.finished, state.audit_features, False)
        ]
        if not self.top:
            return None
        return {
            "steering": ctx.steering,
            "features": _features_json(state, self.finished, self.top, self.per_token),
        }

    def usage(self) -> dict[str, int]:
        c = self.ctx
        return {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
        }

    async def respond(self) -> JSONResponse:
        self.state.batcher.submit(self.rows)
        while len(self.finished) < len(self.rows):
            await self.next_event()
        extension = self._report()
        choices = []
        for i in range(len(self.rows)):
            f = self.finished[i]
            if self.chat:
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": f.text},
                        "logprobs": None,
                        "finish_reason": f.finish_reason,
                    }
                )
            else:
                choices.append(
                    {"index": i, "text": f.text, "logprobs": None, "finish_reason": f.finish_reason}
                )
        body = {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.req.model,
            "choices": choices,
            "usage": self.usage(),
        }
        if extension is not None:
            body["saeforge"] = extension
        return JSONResponse(body)

    def _chunk(self, choices: list[dict], **extra) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.req.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    def _choice(self, idx: int, text: str | None, finish: str | None) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return {"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": idx, "text": text or "", "logprobs": None, "finish_reason": finish}

    async def stream(self):
        self.state.batcher.submit(self.rows)
        if self.chat:
            for i in range(len(self.rows)):
                yield self._chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
        try:
            while len(self.finished) < len(self.rows):
                idx, kind, value = await self.next_event()
                if kind == "text":
                    yield self._chunk([self._choice(idx, value, None)])
                else:
                    yield self._chunk([self._choice(idx, None, value.finish_reason)])
        except RuntimeError as e:
            self.ctx.status, self.ctx.error = 500, str(e)
            await commit(self.state, self.ctx)
            yield f"data: {json.dumps(error_body(str(e), 'server_error'))}\n\n"
            yield "data: [DONE]\n\n"
            return
        extension = self._report()
        if extension is not None:
            yield self._chunk([], saeforge=extension)
        if (self.req.stream_options or {}).get("include_usage"):
            yield self._chunk([], usage=self.usage())
        await commit(self.state, self.ctx)
        yield "data: [DONE]\n\n"


async def completions(request: Request):
    state: ServerState = request.app.state.saeforge
    req = parse(CompletionRequest, await body_json(request))
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts:
        raise RequestError("prompt: give a string or a list of strings", param="prompt")
    gen = Generation(
        state, request.state.ctx, req, prompts, [state.backend.encode(p) for p in prompts], chat=False
    )
    return await _answer(gen)


async def chat_completions(request: Request):
    state: ServerState = request.app.state.saeforge
    req = parse(ChatRequest, await body_json(request))
    state.resolve_model(req.model)
    if state.backend.kind != "causal":
        _check_bounds(state, [], 1, 1)
    text, ids = state.backend.chat([{"role": m.role, "content": m.text()} for m in req.messages])
    gen = Generation(state, request.state.ctx, req, [text], [ids], chat=True)
    return await _answer(gen)


async def _answer(gen: Generation):
    if gen.req.stream:
        return StreamingResponse(
            gen.stream(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
    return await gen.respond()
