"""CSRF protection for every state-changing request of the web console.

Signed in: a synchronizer token bound to the session, HMAC-SHA256 keyed with the session
token (`token_for_session`). It needs no storage, changes with every sign-in, and cannot
be computed without the session token, which lives only in an HttpOnly cookie.

Signed out (the sign-in and sign-up forms, so nobody can sign a victim into the
attacker's account): a double-submit token, a random value in an HttpOnly cookie that the
form must repeat.

Every non-GET request to the pages app passes `require_csrf` (an app-wide dependency, so
no route can forget it). Forms send the token in the `csrf_token` field; htmx and the
upload script send it in the `X-CSRF-Token` header (the page puts it in `hx-headers`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request

from api.web.session import is_https, session_token

CSRF_COOKIE = "cshare_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_CONTEXT = b"cshare-web-csrf-v1"


class CsrfRefused(Exception):
    """A state-changing request without the right token (HTTP 403)."""


def token_for_session(token: str) -> str:
    return hmac.new(token.encode(), _CONTEXT, hashlib.sha256).hexdigest()


def token_for_request(request: Request) -> str:
    """The token the page being rendered must carry (and set the anonymous cookie if new).

    The same rule decides at render time and at check time: with a session cookie the
    session-bound token, else the anonymous cookie's value.
    """
    session = session_token(request)
    if session is not None:
        return token_for_session(session)
    existing = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
    if existing:
        return str(existing)
    fresh = secrets.token_urlsafe(32)
    request.state.new_csrf = fresh  # the renderer sets the cookie on its response
    return fresh


def cookie_to_set(request: Request) -> str | None:
    """A fresh anonymous token the response must store, if rendering made one."""
    value = getattr(request.state, "new_csrf", None)
    return str(value) if value else None


def set_cookie_args(request: Request) -> dict[str, object]:
    return {
        "path": "/",
        "httponly": True,
        "secure": is_https(request),
        "samesite": "lax",
        "max_age": 12 * 3600,
    }


def _expected(request: Request) -> str | None:
    session = session_token(request)
    if session is not None:
        return token_for_session(session)
    return request.cookies.get(CSRF_COOKIE) or None


async def require_csrf(request: Request) -> None:
    """Refuse a state-changing request whose token is missing or wrong."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith(_FORM_TYPES):
            # Starlette caches the parsed form on the request, so the route's own Form
            # parameters reuse it.
            value = (await request.form()).get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    expected = _expected(request)
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused()


_PREFECT_UI_CONTEXT = b"cshare-prefect-ui-csrf-v1:"


def token_for_prefect_ui(session: str, client: str) -> str:
    """The Prefect UI's CSRF token for one of its client ids (`Prefect-Csrf-Client`),
    bound to the console session like the pages' token (api.prefect_proxy.browser)."""
    return hmac.new(
        session.encode(), _PREFECT_UI_CONTEXT + client.encode(), hashlib.sha256
    ).hexdigest()
