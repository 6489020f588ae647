"""The pages app and how it is mounted on the API app.

The pages are a FastAPI app of their own, mounted at `/` *behind* every API route:

- it shares the API's database, settings and Prefect gateway (one of each per process);
- its routes are not API routes: they are outside the OpenAPI schema. The route x role
  matrix (tests/integration/test_permission_matrix.py) walks them too, reading each
  page's `PageRequires(...)` as it reads the API's `Requires(...)`;
- errors become HTML pages (or a redirect to sign in), not the API's JSON bodies;
- `PagesMount` steps aside for any path an API route knows, even with the wrong method,
  so the API keeps answering 405 (and its JSON 404 under /api/).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount, Router
from starlette.types import Scope

from agents.logsetup import request_id
from api.errors import error_body, status_for
from api.web import (
    csrf,
    routes_account,
    routes_data,
    routes_datastores,
    routes_jobs,
    routes_org,
    routes_org_profile,
    routes_profile,
    routes_projects,
    routes_registries,
    routes_secrets,
    routes_settings,
    routes_sso,
    routes_submit,
    routes_teams,
    routes_tokens,
)
from api.web.core import STATIC, render
from api.web.session import SignInRequired
from policies.errors import DomainError, Unauthenticated

log = logging.getLogger("cshare.web")

API_PREFIX = "/api/v1"


def _wants_json(request: Request) -> bool:
    # The upload script asks for JSON; everything else is a person with a browser.
    return "application/json" in request.headers.get("accept", "")


def _sign_in(request: Request) -> Response:
    target = request.url.path
    if request.method == "GET" and request.url.query:
        target += "?" + request.url.query
    if _wants_json(request):
        return JSONResponse(error_body("unauthenticated", "Sign in first."), status_code=401)
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


def _rejoin_slug(request: Request, status_code: int) -> str:
    """On the 404 of an organization's page, the slug from the URL for the "ask to
    rejoin" link: shown for every slug alike, so it says nothing about the org."""
    parts = request.url.path.split("/")
    if status_code == 404 and len(parts) > 2 and parts[1] == "orgs" and parts[2] != "new":
        return parts[2][:64]
    return ""


def _error_page(request: Request, status_code: int, title: str, detail: str) -> Response:
    if _wants_json(request):
        return JSONResponse(error_body(title.lower().replace(" ", "_"), detail), status_code)
    return render(
        request,
        "error.html",
        status_code=status_code,
        title=title,
        detail=detail,
        code=status_code,
        request_id=request_id.get(),
        rejoin_slug=_rejoin_slug(request, status_code),
    )


_TITLES = {
    400: "Bad request",
    401: "Sign in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Conflict",
    413: "Too large",
    422: "Invalid input",
    429: "Too many requests",
    503: "Unavailable",
}


def _install_errors(pages: FastAPI) -> None:
    @pages.exception_handler(SignInRequired)
    async def _signin(request: Request, _exc: Exception) -> Response:
        return _sign_in(request)

    @pages.exception_handler(csrf.CsrfRefused)
    async def _csrf(request: Request, _exc: Exception) -> Response:
        return _error_page(
            request,
            403,
            "Not allowed",
            "This form has expired or did not come from this site. Reload the page and try again.",
        )

    @pages.exception_handler(DomainError)
    async def _domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        if isinstance(exc, Unauthenticated):
            return _sign_in(request)
        code = status_for(exc)
        if _wants_json(request):
            extra: dict[str, Any] = {}
            field = getattr(exc, "field", None)
            if field:
                extra["field"] = field
            return JSONResponse(error_body(exc.code, exc.detail, **extra), code)
        return _error_page(request, code, _TITLES.get(code, "Error"), exc.detail)

    @pages.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        detail = f"{where}: {first.get('msg', 'invalid value')}" if where else "Invalid input."
        return _error_page(request, 422, "Invalid input", detail)

    @pages.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = exc.status_code
        detail = "There is no such page." if code == 404 else str(exc.detail)
        return _error_page(request, code, _TITLES.get(code, "Error"), detail)

    @pages.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on a page", exc_info=exc)
        return _error_page(
            request, 500, "Server error", "Something went wrong on the server; it has been logged."
        )


def create_pages_app(parent: FastAPI) -> FastAPI:
    pages = FastAPI(
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # Every non-GET request of every page needs its CSRF token (see api.web.csrf).
        dependencies=[Depends(csrf.require_csrf)],
    )
    # One database, settings, gateway and rate-limit counters per process: the API's.
    pages.state.settings = parent.state.settings
    pages.state.db = parent.state.db
    pages.state.gateway = parent.state.gateway
    pages.state.rate_limits = parent.state.rate_limits
    pages.state.trusted_proxies = parent.state.trusted_proxies
    pages.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (
        routes_account,
        routes_org,
        routes_org_profile,
        routes_data,
        routes_submit,  # before routes_jobs: /jobs/new is not a job id
        routes_jobs,
        routes_projects,
        routes_settings,
        routes_secrets,
        routes_registries,
        routes_teams,
        routes_datastores,
        routes_profile,
        routes_tokens,
        routes_sso,
    ):
        pages.include_router(module.router)
    _install_errors(pages)
    return pages


class PagesMount(Mount):
    """`Mount("", pages)` that never takes a request an API route could answer."""

    def __init__(self, app: FastAPI, *, parent: Router) -> None:
        super().__init__("", app=app, name="pages")
        self._parent = parent

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = str(scope.get("path", ""))
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            return Match.NONE, {}
        for route in self._parent.routes:
            if route is self:
                break
            if _route_matches(route, scope):
                return Match.NONE, {}  # e.g. POST /healthz: let the API answer 405
        return super().matches(scope)


def _route_matches(route: BaseRoute, scope: Scope) -> bool:
    match, _ = route.matches(scope)
    return match is not Match.NONE


def install(app: FastAPI) -> None:
    """Mount the pages (and their /static) on the API app, after every API route."""
    app.router.routes.append(PagesMount(create_pages_app(app), parent=app.router))
