"""The Prefect API behind Compute Share: `/prefect/api` and `/prefect/<org>/api`.

Prefect's shared secret stays in the control plane; agents, jobs and people use the
proxy with their own Compute Share credential, and `policies.prefect_rules` says what
each may do (docs/security.md has the table). Modules: `routes` (HTTP: match, check,
forward), `relay` (websockets), `principals` (who is calling), `facts` (ledger
lookups), `scoping` (filters narrowed to the caller), `actions` (admission and cancel
for people), `upstream` (the connection to Prefect), `browser` (the Prefect UI's calls with the
console session) and `ui` (the Prefect UI's pages, behind the console's sign-in).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from api.prefect_proxy import ui
from api.prefect_proxy.relay import relay
from api.prefect_proxy.routes import PrefectProxy
from api.prefect_proxy.upstream import Upstream
from orgs.db import Database
from policies.prefect_ui import OPERATOR_UI

__all__ = ["PREFIX", "install"]

PREFIX = "/prefect"
_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
_SOCKETS = ("/events/in", "/events/out", "/logs/out")


def install(app: FastAPI, db: Database, api_url: str, auth_string: str | None) -> PrefectProxy:
    """Mount the proxy (a plain Starlette mount: outside the OpenAPI schema and the
    route x role matrix, which its own rule table replaces). Call before the console's
    catch-all mount."""
    proxy = PrefectProxy(db, Upstream(api_url, auth_string))

    async def http(request: Request) -> Response:
        return await proxy.handle(request)

    def socket(path: str) -> object:
        async def endpoint(websocket: WebSocket) -> None:
            await relay(proxy, websocket, path)

        return endpoint

    routes: list[Route | WebSocketRoute] = []
    for root in ("/api", "/{org}/api"):
        routes += [WebSocketRoute(root + p, socket(p)) for p in _SOCKETS]  # type: ignore[arg-type]
        routes.append(Route(root + "/{path:path}", http, methods=_METHODS))
    # The Prefect UI (api/prefect_proxy/ui.py), after the API: the operators' at
    # /prefect/admin/ ("admin" is a reserved org slug), each org's at /prefect/<org>/.
    routes += [
        Route("/", ui.ui_home, methods=["GET"]),
        Route(f"/{OPERATOR_UI}/{{path:path}}", ui.ui_page, methods=["GET"]),
        Route("/{org}/{path:path}", ui.ui_page, methods=["GET"]),
        Route("/{org}", ui.ui_home, methods=["GET"]),
    ]
    app.router.routes.append(Mount(PREFIX, routes=routes))
    app.state.prefect_proxy = proxy
    return proxy
