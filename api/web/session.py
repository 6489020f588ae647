"""Cookie sessions for the web console.

The cookie holds an ordinary session token from `orgs.accounts` (the same kind
`POST /auth/login` returns), so signing in, expiry and revocation work exactly as for the
API: `accounts.authenticate` decides, and signing out revokes the token server-side.

Cookie attributes:
- `HttpOnly`: page scripts never see the token (an injected script cannot steal it);
- `SameSite=Lax`: other sites' forms and scripts do not get it sent along on POSTs;
- `Secure` whenever the request came over https (behind a proxy: uvicorn sets the
  scheme from `X-Forwarded-Proto` sent by `CSHARE_TRUSTED_PROXIES`), so it never travels in
  clear once the site is served over TLS; plain http stays usable for local setups.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from api.deps import SessionDep
from orgs import accounts
from orgs.db import utcnow
from orgs.models import ApiToken, User
from policies.errors import Unauthenticated

SESSION_COOKIE = "cshare_session"


class SignInRequired(Exception):
    """The page needs a signed-in user; answered with a redirect to /login."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person looking at a page."""

    user: User
    token: ApiToken


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(
    response: Response, request: Request, token: str, expires_at: datetime | None
) -> None:
    max_age = None
    if expires_at is not None:
        max_age = max(0, int((expires_at - utcnow()).total_seconds()))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        secure=is_https(request),
        samesite="lax",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, secure=is_https(request), samesite="lax"
    )


def session_token(request: Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE)
    return token or None


def current_viewer(request: Request, session: Session) -> Viewer | None:
    """The signed-in user, or None (no cookie, or a token that is expired or revoked)."""
    token = session_token(request)
    if token is None:
        return None
    try:
        user, record = accounts.authenticate(session, token)
    except Unauthenticated:
        return None
    # Only session tokens are ever put in the cookie; a personal token copied into it by
    # hand is not a browser session (it would outlive sign-out).
    if record.kind != "session":
        return None
    return Viewer(user=user, token=record)


def optional_viewer(request: Request, session: SessionDep) -> Viewer | None:
    return current_viewer(request, session)


def require_viewer(request: Request, session: SessionDep) -> Viewer:
    viewer = current_viewer(request, session)
    if viewer is None:
        raise SignInRequired()
    return viewer


MaybeViewer = Annotated[Viewer | None, Depends(optional_viewer)]
ViewerDep = Annotated[Viewer, Depends(require_viewer)]
