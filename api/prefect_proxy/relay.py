"""The Prefect websockets through the proxy: `/events/in`, `/events/out`, `/logs/out`.

The caller authenticates as on HTTP (the Authorization header, or the credential in
Prefect's first `{"type": "auth", "token": ...}` message, which is what clients send
from PREFECT_API_AUTH_STRING); the proxy then opens its own socket to Prefect with
Prefect's secret. Incoming events are forwarded only when every run they name is one
the caller may write (others are dropped and logged); outgoing events and log lines
only when the caller may see their run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from typing import Any, Final

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from api.prefect_proxy import facts
from api.prefect_proxy.principals import credential_from_header
from api.prefect_proxy.routes import PrefectProxy, ProxyError, check_event
from policies.errors import DomainError
from policies.prefect_rules import (
    Actor,
    Principal,
    Verb,
    check_run,
    endpoint_access,
    event_run_ids,
    match,
)

log = logging.getLogger("cshare.prefect_proxy")

POLICY_VIOLATION: Final = 1008
TRY_AGAIN_LATER: Final = 1013
# How long a "may see this run" answer is reused on one socket (runs change hands).
DECISION_TTL_S: Final = 5.0


def _reason(text: str) -> str:
    return text.encode()[:120].decode(errors="ignore")  # close reasons: at most 123 bytes


async def _authenticate(proxy: PrefectProxy, ws: WebSocket, path: str) -> Actor | None:
    prefect_protocol = "prefect" in ws.scope.get("subprotocols", [])
    await ws.accept(subprotocol="prefect" if prefect_protocol else None)
    credential = credential_from_header(ws.headers.get("authorization"))
    if prefect_protocol:
        try:
            message = json.loads(await ws.receive_text())
        except (ValueError, WebSocketDisconnect):
            await ws.close(POLICY_VIOLATION, "Expected 'auth' message")
            return None
        if not isinstance(message, dict) or message.get("type") != "auth":
            await ws.close(POLICY_VIOLATION, "Expected 'auth' message")
            return None
        token = message.get("token")
        credential = token if isinstance(token, str) and token else credential
    org = ws.path_params.get("org")
    try:
        actor = await proxy.actor(f"Bearer {credential}" if credential else None, org)
        found = match("WS", path)
        if found is None:
            raise ProxyError(403, "allowlist", f"{path} is not relayed (rule: allowlist).")
        decision = endpoint_access(found[0], actor)
        if not decision.allowed:
            raise ProxyError(403, decision.rule, f"{decision.reason} (rule: {decision.rule})")
    except (DomainError, ProxyError) as exc:
        await ws.close(POLICY_VIOLATION, _reason(exc.detail))
        return None
    if prefect_protocol:
        await ws.send_json({"type": "auth_success"})
    return actor


async def _open_upstream(proxy: PrefectProxy, path: str) -> ClientConnection:
    upstream = await connect(
        proxy.upstream.ws_url(path),
        subprotocols=["prefect"],  # type: ignore[list-item]
        additional_headers=proxy.upstream.ws_headers(),
        open_timeout=10,
    )
    await upstream.send(json.dumps({"type": "auth", "token": proxy.upstream.auth_string}))
    answer = json.loads(await upstream.recv())
    if not isinstance(answer, dict) or answer.get("type") != "auth_success":
        await upstream.close()
        raise WebSocketException("Prefect refused the proxy's credentials")
    return upstream


class _Visibility:
    """May the actor see runs (per socket, answers reused for a few seconds)."""

    def __init__(self, proxy: PrefectProxy, actor: Actor) -> None:
        self.proxy, self.actor = proxy, actor
        # Machines follow the runs they are offered too (the agent wakes on them).
        self.verb = Verb.log if actor.principal is Principal.machine else Verb.read
        self._seen: dict[uuid.UUID, tuple[bool, float]] = {}

    async def allows(self, runs: set[uuid.UUID]) -> bool:
        now = time.monotonic()
        unknown = [r for r in runs if self._seen.get(r, (False, 0.0))[1] < now]
        if unknown:
            found = await self.proxy._db(facts.run_facts, unknown)
            for run in unknown:
                ok = bool(check_run(self.actor, self.verb, found.get(run)))
                self._seen[run] = (ok, now + DECISION_TTL_S)
        return all(self._seen[r][0] for r in runs)


async def relay(proxy: PrefectProxy, ws: WebSocket, path: str) -> None:
    actor = await _authenticate(proxy, ws, path)
    if actor is None:
        return
    try:
        upstream = await _open_upstream(proxy, path)
    except (OSError, WebSocketException, ValueError, TimeoutError) as exc:
        log.warning("Prefect websocket %s not reachable: %s", path, exc)
        await ws.close(TRY_AGAIN_LATER, "Prefect is not answering; try again.")
        return
    try:
        if path == "/events/in":
            await _events_in(proxy, actor, ws, upstream)
        else:
            await _stream_out(proxy, actor, ws, upstream, logs=path == "/logs/out")
    finally:
        await upstream.close()


async def _events_in(
    proxy: PrefectProxy, actor: Actor, ws: WebSocket, upstream: ClientConnection
) -> None:
    dropped = 0
    try:
        while True:
            text = await ws.receive_text()
            try:
                await check_event(proxy, actor, json.loads(text))
            except (ProxyError, DomainError, ValueError) as exc:
                dropped += 1
                if dropped in (1, 10, 100) or dropped % 1000 == 0:
                    detail = getattr(exc, "detail", str(exc))
                    log.warning(
                        "events/in: dropped %d event(s) from %s: %s",
                        dropped,
                        actor.principal.value,
                        detail,
                    )
                continue
            await upstream.send(text)
    except (WebSocketDisconnect, ConnectionClosed):
        return


def _runs_of(message: Any, logs: bool) -> set[uuid.UUID] | None:
    if not isinstance(message, dict):
        return None
    if logs:
        line = message.get("log")
        run = line.get("flow_run_id") if isinstance(line, dict) else None
        try:
            return {uuid.UUID(str(run))} if run else None
        except ValueError:
            return None
    event = message.get("event")
    named = event_run_ids(event) if isinstance(event, dict) else None
    return named[1] if named else None


async def _stream_out(
    proxy: PrefectProxy, actor: Actor, ws: WebSocket, upstream: ClientConnection, *, logs: bool
) -> None:
    visible = _Visibility(proxy, actor)

    async def down() -> None:
        async for text in upstream:
            message = json.loads(text)
            runs = _runs_of(message, logs)
            if runs and await visible.allows(runs):
                await ws.send_text(text if isinstance(text, str) else text.decode())

    async def up() -> None:
        # The filter message, then nothing but keep-alives until the client leaves.
        while True:
            await upstream.send(await ws.receive_text())

    try:
        async with anyio.create_task_group() as group:

            async def run(fn: Any) -> None:
                with contextlib.suppress(WebSocketDisconnect, ConnectionClosed):
                    await fn()
                group.cancel_scope.cancel()

            group.start_soon(run, down)
            group.start_soon(run, up)
    finally:
        with contextlib.suppress(RuntimeError):  # already closed
            await ws.close()
