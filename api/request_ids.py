"""A request id per API request: in every log line written while handling it, in the
`X-Request-ID` response header and in error bodies (api/errors.py), so a user's error
message leads an operator to the server's lines for it."""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.logsetup import accept_request_id, request_id

HEADER: Final = "X-Request-ID"


class RequestIdMiddleware:
    """Pure ASGI middleware: takes the client's `X-Request-ID` when it is a sane token,
    else makes one; sets it for logging and answers it in the response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accept_request_id(Request(scope).headers.get(HEADER))
        # Also in the request's state: the 500 handler runs outside this middleware.
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def adopt(request: Request) -> str | None:
    """For handlers that run outside the middleware (Starlette's server-error handler):
    make the request's id current again, for its log lines and the access line of the
    response (the rest of this request's task belongs to it, so nothing resets it)."""
    rid = getattr(request.state, "request_id", None)
    if isinstance(rid, str):
        request_id.set(rid)
    return rid if isinstance(rid, str) else None
