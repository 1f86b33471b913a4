"""The outermost ASGI layer: authentication, body-size and concurrency limits, and one audit record per request.

Every HTTP request under /v1/ gets a `RequestContext` (in `scope["state"]["ctx"]`) that the route handlers fill
in. Its audit record is committed (durably) just before the last byte of the response is sent; a streaming
handler commits it itself before `data: [DONE]`; a request whose client went away is committed after the app
returns, with status 499. Refusals made here (401, 413, 429) are audited too.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import ClientDisconnect

from saeforge.serve.context import RequestContext
from saeforge.serve.state import ServerState

RETRY_AFTER_S = 1  # what a 429 tells the client to wait
_LIMITED = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def commit(state: ServerState, ctx: RequestContext) -> None:
    """Writes the request's audit record and waits until it is on disk (once per request)."""
    if ctx.committed:
        return
    ctx.committed = True
    if state.audit is not None:
        record = ctx.record(state.audit_text, state.backend.fingerprint, state.sae_records())
        await asyncio.wrap_future(state.audit.submit(record))


class Guard:
    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def _refuse(
        self, send, ctx: RequestContext, status: int, message: str, kind: str, code: str, headers=()
    ):
        ctx.status, ctx.error = status, message
        await commit(self.state, ctx)
        body = json.dumps(error_body(message, kind, code=code)).encode()
        hdrs = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _read_body(self, receive) -> tuple[bytes | None, list]:
        """The whole body, or None past `max_body_bytes`; plus messages that arrived after it (a disconnect)."""
        limit = self.state.limits.max_body_bytes
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return b"".join(chunks), [msg]
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return None, []
            if not msg.get("more_body", False):
                return b"".join(chunks), []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state = self.state
        ctx = RequestContext(endpoint=scope["path"], method=scope["method"])
        scope.setdefault("state", {})["ctx"] = ctx
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if state.keys is not None:
            ctx.key_id = state.keys.check(headers.get("authorization"))
            if ctx.key_id is None:
                await self._refuse(
                    send,
                    ctx,
                    401,
                    "missing or invalid API key: send `Authorization: Bearer KEY`",
                    "authentication_error",
                    "invalid_api_key",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        limit = state.limits.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._refuse(
                send,
                ctx,
                413,
                f"request body of {length} bytes exceeds the server's limit of {limit} bytes",
                "invalid_request_error",
                "request_too_large",
            )
            return
        limited = scope["method"] == "POST" and scope["path"] in _LIMITED
        if limited and state.in_flight >= state.limits.max_concurrency:
            retry = str(RETRY_AFTER_S).encode()
            await self._refuse(
                send,
                ctx,
                429,
                f"the server is busy ({state.in_flight} requests in flight, the limit is "
                f"{state.limits.max_concurrency}): retry after {retry.decode()} s",
                "rate_limit_error",
                "rate_limit_exceeded",
                [(b"retry-after", retry)],
            )
            return
        if limited:
            state.in_flight += 1
        try:
            await self._serve(scope, receive, send, ctx, limit)
        finally:
            if limited:
                state.in_flight -= 1
            for cancel in ctx.on_close:
                cancel()

    async def _serve(self, scope, receive, send, ctx: RequestContext, limit: int) -> None:
        body, after = await self._read_body(receive)
        if body is None:
            await self._refuse(
                send,
                ctx,
                413,
                f"request body exceeds the server's limit of {limit} bytes",
                "invalid_request_error",
                "request_too_large",
            )
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            if after:
                return after.pop(0)
            return await receive()

        async def audited_send(msg):
            if msg["type"] == "http.response.start":
                ctx.status = msg["status"]
                msg = {
                    **msg,
                    "headers": [*msg.get("headers", []), (b"x-request-id", ctx.request_id.encode())],
                }
            elif msg["type"] == "http.response.body" and not msg.get("more_body", False):
                await commit(self.state, ctx)
            await send(msg)

        try:
            await self.app(scope, replay, audited_send)
        except (OSError, ClientDisconnect):  # the client went away mid-response
            pass
        if not ctx.committed:
            ctx.status, ctx.error = 499, ctx.error or "client disconnected before the response completed"
            await commit(self.state, ctx)
