"""The proxy's one connection to the real Prefect API: Prefect's basic auth added here,
the caller's credentials and hop-by-hop headers never forwarded, bodies streamed."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import httpx
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.responses import Response, StreamingResponse

from policies.errors import Unavailable

# RFC 9110 7.6.1 hop-by-hop headers, plus what must never cross the boundary: the
# caller's credential (ours, not Prefect's), cookies, and headers we set ourselves.
_DROPPED_REQUEST: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        # The Prefect UI's CSRF headers are Compute Share's (api/prefect_proxy/browser.py).
        "prefect-csrf-token",
        "prefect-csrf-client",
        "prefect-csrf-retry-count",
    }
)
_DROPPED_RESPONSE: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "www-authenticate",
        "server",
        "date",
    }
)


def basic_auth(auth_string: str) -> str:
    return "Basic " + base64.b64encode(auth_string.encode()).decode()


class Upstream:
    """An httpx.AsyncClient per event loop (tests run apps on several loops)."""

    def __init__(self, api_url: str, auth_string: str | None, *, timeout_s: float = 60.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._auth = basic_auth(auth_string) if auth_string else None
        self._auth_string = auth_string
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._clients: dict[int, httpx.AsyncClient] = {}

    @property
    def auth_string(self) -> str | None:
        return self._auth_string

    def ws_url(self, path: str) -> str:
        base = self.api_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return base + path

    def ws_headers(self) -> dict[str, str]:
        return {"Authorization": self._auth} if self._auth else {}

    def _client(self) -> httpx.AsyncClient:
        key = id(asyncio.get_running_loop())
        client = self._clients.get(key)
        if client is None:
            # trust_env=False: no proxy or netrc from the environment between us and Prefect.
            client = httpx.AsyncClient(
                base_url=self.api_url,
                timeout=self._timeout,
                trust_env=False,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        key = id(asyncio.get_running_loop())
        client = self._clients.pop(key, None)
        if client is not None:
            await client.aclose()

    def headers(self, incoming: Headers | Mapping[str, str]) -> dict[str, str]:
        out = {k: v for k, v in incoming.items() if k.lower() not in _DROPPED_REQUEST}
        out.pop("x-cshare-org", None)
        if self._auth:
            out["Authorization"] = self._auth
        return out

    async def open(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
    ) -> httpx.Response:
        """Send and return the response with its body not yet read (stream it or read it)."""
        client = self._client()
        url = path + (f"?{query}" if query else "")
        request = client.build_request(
            method, url, headers=dict(headers or {}) or self.headers({}), content=content
        )
        try:
            return await client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise Unavailable(
                f"The Prefect server is not answering ({type(exc).__name__}); try again."
            ) from None

    async def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A small call made by the proxy itself; (status, parsed body or None)."""
        content = json.dumps(body).encode() if body is not None else None
        headers = self.headers({"content-type": "application/json"} if content else {})
        response = await self.open(method, path, headers=headers, content=content)
        try:
            raw = await response.aread()
        finally:
            await response.aclose()
        try:
            return response.status_code, json.loads(raw) if raw else None
        except ValueError:
            return response.status_code, None


def response_headers(upstream: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.multi_items() if k.lower() not in _DROPPED_RESPONSE}


def stream_back(upstream: httpx.Response) -> Response:
    """Relay Prefect's answer as it arrives (raw bytes: its content-encoding stays valid)."""
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=response_headers(upstream),
        background=BackgroundTask(upstream.aclose),
    )


def json_back(status: int, body: Any) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
    )
