"""The ASGI app: OpenAI-compatible routes plus the feature index, behind `Guard` (auth, limits, audit)."""

from __future__ import annotations

import asyncio
import base64
import time
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from saeforge.serve.features import describe_latent, search_features
from saeforge.serve.generation import body_json, chat_completions, completions
from saeforge.serve.guard import Guard, error_body
from saeforge.serve.saes import RequestError, resolve_sae
from saeforge.serve.schemas import EmbeddingRequest, parse
from saeforge.serve.state import ServerState

MAX_EMBED_INPUTS = 256


async def models(request: Request):
    state: ServerState = request.app.state.saeforge
    created = int(time.time())
    data = []
    for mid in state.model_ids():
        variant = mid.partition(":")[2] or None
        entry = {"id": mid, "object": "model", "created": created, "owned_by": "saeforge"}
        entry["saeforge"] = {
            "variant": variant,
            "edits": state.variants[variant].as_json() if variant else None,
            "saes": [{"name": s.name, "hook": s.hook, "d_sae": s.d_sae} for s in state.saes.values()],
        }
        data.append(entry)
    return {"object": "list", "data": data}


async def embeddings(request: Request):
    state: ServerState = request.app.state.saeforge
    ctx = request.state.ctx
    req = parse(EmbeddingRequest, await body_json(request))
    variant, edits = state.resolve_model(req.model)
    ctx.model, ctx.variant = req.model, variant
    if edits:
        raise RequestError("embeddings are not steered: use the base model id", param="model")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or len(texts) > MAX_EMBED_INPUTS:
        raise RequestError(f"input: give 1..{MAX_EMBED_INPUTS} strings", param="input")
    ctx.prompt = texts[0] if len(texts) == 1 else texts
    vectors, counts = await asyncio.wrap_future(state.batcher.call(lambda: state.backend.embed(texts)))
    ctx.prompt_tokens = int(sum(counts))
    data = []
    for i, v in enumerate(vectors):
        emb = (
            base64.b64encode(v.numpy().astype("<f4").tobytes()).decode()
            if req.encoding_format == "base64"
            else [float(x) for x in np.asarray(v, dtype=np.float32)]
        )
        data.append({"object": "embedding", "index": i, "embedding": emb})
    usage = {"prompt_tokens": ctx.prompt_tokens, "total_tokens": ctx.prompt_tokens}
    return {"object": "list", "data": data, "model": req.model, "usage": usage}


async def feature_search(request: Request, q: str = "", sae: str | None = None, limit: int = 20):
    state: ServerState = request.app.state.saeforge
    served = resolve_sae(state.saes, sae, "sae")
    if not 1 <= limit <= 200:
        raise RequestError("limit must be in 1..200", param="limit")
    return {"object": "list", "data": search_features(served, q, limit)}


async def feature_detail(request: Request, sae: str, latent: int):
    state: ServerState = request.app.state.saeforge
    return describe_latent(resolve_sae(state.saes, sae, "sae"), latent)


def _error_response(status: int, message: str, kind: str, param=None, code=None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param, code), status_code=status)


def create_app(state: ServerState):
    """The ASGI application serving `state` (its batcher is started and stopped with the app's lifespan)."""

    @asynccontextmanager
    async def lifespan(_app):
        state.batcher.start()
        try:
            yield
        finally:
            state.batcher.stop(timeout=60)
            if state.audit is not None:
                state.audit.close()

    api = FastAPI(title="saeforge serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    api.state.saeforge = state
    api.add_api_route("/v1/models", models, methods=["GET"])
    api.add_api_route("/v1/completions", completions, methods=["POST"])
    api.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    api.add_api_route("/v1/embeddings", embeddings, methods=["POST"])
    api.add_api_route("/v1/features/search", feature_search, methods=["GET"])
    api.add_api_route("/v1/features/{sae}/{latent}", feature_detail, methods=["GET"])
    api.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])

    @api.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError):
        request.state.ctx.error = str(e)
        code = "model_not_found" if e.status == 404 and e.param == "model" else None
        return _error_response(e.status, str(e), e.kind, e.param, code)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if hasattr(request.state, "ctx"):
            request.state.ctx.error = f"{loc}: {first['msg']}"
        return _error_response(400, f"{loc}: {first['msg']}", "invalid_request_error", loc)

    @api.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error_response(e.status_code, str(e.detail), kind)

    @api.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        if hasattr(request.state, "ctx"):
            request.state.ctx.error = f"{type(e).__name__}: {e}"
        return _error_response(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    return Guard(api, state)
