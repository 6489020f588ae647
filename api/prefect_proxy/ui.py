"""The Prefect UI behind the console's sign-in: Prefect's own static build, served the
way Prefect's server serves it, pointed at the proxy.

- `/prefect/<org>/...`: that organization's UI, for its owners and admins; its API is
  `/prefect/<org>/api` (their actor, every rule of `policies.prefect_rules`).
- `/prefect/admin/...`: the instance-wide UI for instance operators (`CSHARE_OPERATORS`);
  its API is `/prefect/api`. `admin` is a reserved organization slug.
- `/prefect/`: operators go to `/prefect/admin/`; others get the list of organizations
  whose UI they may open.

Signed out: a redirect to the console's sign-in, back here after. Members, non-operators:
a 403 page naming the rule; non-members of the org: 404, as in the console.

Like Prefect's `create_ui_app`, every file's `/PREFECT_UI_SERVE_BASE_REPLACE_PLACEHOLDER`
becomes the UI's base path, unknown paths get index.html (the UI routes in the browser),
and `<base>/ui-settings` tells the UI where its API is (`api_url`) and that it must send
CSRF headers (`csrf_enabled`; see `api.prefect_proxy.browser`).
"""

from __future__ import annotations

import gzip
import mimetypes
from functools import lru_cache
from pathlib import Path
from typing import Final
from urllib.parse import quote

import prefect
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from agents.logsetup import request_id
from api.errors import status_for
from api.web.core import render
from api.web.session import current_viewer, session_token
from orgs import organizations
from policies.access import Viewer
from policies.errors import DomainError, Unauthenticated
from policies.permissions import Role
from policies.prefect_ui import OPERATOR_UI, is_operator, org_ui_access, parse_operators

PLACEHOLDER: Final = b"/PREFECT_UI_SERVE_BASE_REPLACE_PLACEHOLDER"
_COMPRESSIBLE: Final = frozenset({".js", ".css", ".html", ".svg", ".json", ".webmanifest"})
# Headers of every UI response. The UI talks to this site only (connect-src): a script
# injected into it cannot send what it reads elsewhere. It is never framed.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-eval'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
        "object-src 'none'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def ui_root() -> Path:
    """The static build shipped in the prefect package (the v1 UI, Prefect's default)."""
    return Path(prefect.__ui_static_path__).resolve()


@lru_cache(maxsize=256)
def _raw(path: Path) -> bytes:
    return path.read_bytes()


@lru_cache(maxsize=16)
def _body(path: Path, base: str, compressed: bool) -> bytes:
    """A file with its base path filled in (gzipped once per base, the main bundle is
    4 MB)."""
    data = _raw(path).replace(PLACEHOLDER, base.encode())
    return gzip.compress(data, compresslevel=6, mtime=0) if compressed else data


def _file(rel: str) -> Path | None:
    root = ui_root()
    if not rel or rel.endswith("/"):
        return None
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def serve(request: Request, rel: str, base: str) -> Response:
    """The UI's file at `rel` (under `base`), or its index.html for the UI's own routes."""
    path = _file(rel)
    if path is None:
        if rel.startswith(("assets/", "ico/")) or "." in rel.rsplit("/", 1)[-1]:
            return Response("Not found", status_code=404, headers=SECURITY_HEADERS)
        path = ui_root() / "index.html"
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".js":
        media_type = "text/javascript"
    headers = dict(SECURITY_HEADERS)
    # Hashed asset names never change content; the page itself is always fetched anew
    # (signing out must take the UI away).
    hashed = path.parent.name == "assets"
    headers["Cache-Control"] = "private, max-age=86400" if hashed else "no-store"
    headers["Vary"] = "Accept-Encoding"
    compressed = path.suffix in _COMPRESSIBLE and "gzip" in request.headers.get(
        "accept-encoding", ""
    )
    if compressed:
        headers["Content-Encoding"] = "gzip"
    return Response(_body(path, base, compressed), media_type=media_type, headers=headers)


def ui_settings(base: str, api_url: str) -> Response:
    """What Prefect's `/ui-settings` says, pointed at the proxy."""
    return JSONResponse(
        {
            "api_url": api_url,
            "csrf_enabled": True,
            "auth": None,
            "flags": [],
            "default_ui": "v1",
            "available_uis": ["v1"],
            "v1_base_url": base,
            "v2_base_url": None,
        },
        headers={"Cache-Control": "no-store", **SECURITY_HEADERS},
    )


def _sign_in(request: Request) -> Response:
    return RedirectResponse(f"/login?next={quote(request.url.path, safe='/')}", status_code=303)


def _error(request: Request, exc: DomainError) -> Response:
    code = status_for(exc)
    title = {403: "Not allowed", 404: "Not found"}.get(code, "Error")
    return render(
        request,
        "error.html",
        status_code=code,
        title=title,
        detail=exc.detail,
        code=code,
        request_id=request_id.get(),
    )


def _operators(request: Request) -> frozenset[str]:
    return parse_operators(request.app.state.settings.operators)


async def ui_page(request: Request) -> Response:
    """GET /prefect/<org>/<path> and /prefect/admin/<path>."""
    org = request.path_params.get("org")
    rel = str(request.path_params.get("path", ""))
    proxy = request.app.state.prefect_proxy
    token = session_token(request)
    if token is None:
        return _sign_in(request)
    try:
        await proxy.ui_caller(request, token, org)
    except Unauthenticated:
        return _sign_in(request)
    except DomainError as exc:
        return _error(request, exc)
    base = f"/prefect/{org or OPERATOR_UI}"
    if rel.rstrip("/") == "ui-settings":
        return ui_settings(base, f"/prefect/{org}/api" if org else "/prefect/api")
    return serve(request, rel, base)


def ui_home(request: Request) -> Response:
    """GET /prefect/ (and /prefect/<org>, /prefect/admin without the slash)."""
    org = request.path_params.get("org")
    if org is not None:
        return RedirectResponse(f"/prefect/{org}/", status_code=307)
    with request.app.state.db.session(write=False) as session:
        viewer = current_viewer(request, session)
        if viewer is None:
            return _sign_in(request)
        user = viewer.user
        if is_operator(_operators(request), email=user.email, name=user.name):
            return RedirectResponse(f"/prefect/{OPERATOR_UI}/", status_code=303)
        links = [
            (org.name, f"/prefect/{org.slug}/")
            for org, role in organizations.list_mine(session, user)
            if org_ui_access(Viewer(user_id=user.id, org_id=org.id, role=Role(role)))
        ]
        return render(
            request,
            "prefect_ui.html",
            viewer=viewer,
            links=links,
            status_code=200 if links else 403,
        )
