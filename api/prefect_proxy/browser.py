"""The Prefect UI's own API calls: the console's session cookie instead of a credential.

The UI (served by `api.prefect_proxy.ui`) calls the proxy from the browser with no
Authorization header; the HttpOnly session cookie comes along. Such a call is taken only:

- from a console *session* (a personal or machine token put in the cookie is refused);
- on `/prefect/<org>/api`, from an owner or admin of that organization (members: 403
  `ui_admins_only`); the actor is then exactly the one their token would give, so every
  rule of `policies.prefect_rules` applies unchanged;
- on `/prefect/api`, from an instance operator (`policies.prefect_ui`);
- for POST/PATCH/PUT/DELETE, with the CSRF headers Prefect's UI sends when its
  ui-settings say `csrf_enabled` (`Prefect-Csrf-Client`, `Prefect-Csrf-Token`): the
  token is an HMAC of the session token and the client id, handed out by
  `GET /csrf-token` (answered here, never by Prefect). Another site's page can neither
  read it nor send those headers without a CORS preflight, which the server never grants.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from sqlalchemy.orm import Session
from starlette.requests import Request

from api.prefect_proxy.principals import person_actor
from api.web.csrf import SAFE_METHODS, token_for_prefect_ui
from api.web.session import session_token
from orgs import accounts
from orgs.db import utcnow
from policies.errors import Forbidden, Invalid, Unauthenticated
from policies.prefect_rules import Actor, Decision
from policies.prefect_ui import is_operator, operator_only, org_ui_access

CSRF_CLIENT: Final = "prefect-csrf-client"
CSRF_TOKEN: Final = "prefect-csrf-token"  # noqa: S105 - a header name
# The UI refreshes its token at three quarters of this; the HMAC itself does not expire
# (it dies with the session).
CSRF_LIFETIME: Final = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class UiCaller:
    """A signed-in person using the Prefect UI. `actor` is None for an instance
    operator on the instance-wide UI (nothing is narrowed for them)."""

    actor: Actor | None
    session_token: str

    @property
    def operator(self) -> bool:
        return self.actor is None


def _refuse(decision: Decision) -> Forbidden:
    return Forbidden(f"{decision.reason} (rule: {decision.rule})", code=decision.rule)


def ui_caller(
    session: Session, token: str, org_slug: str | None, operators: Iterable[str]
) -> UiCaller:
    """Who holds this console session, for the UI of `org_slug` (None: the operators'
    instance-wide UI). 401 without a live session, 404 for a non-member of the org, 403
    for a member or a non-operator."""
    user, record = accounts.authenticate(session, token)
    if record.kind != "session":
        raise Unauthenticated("Sign in to the console to use the Prefect UI.")
    if org_slug is None:
        if is_operator(operators, email=user.email, name=user.name):
            return UiCaller(None, token)
        raise _refuse(operator_only())
    actor = person_actor(session, user, org_slug, token=record)
    assert actor.viewer is not None
    decision = org_ui_access(actor.viewer)
    if not decision:
        raise _refuse(decision)
    return UiCaller(actor, token)


def cookie_session(request: Request) -> str | None:
    """The console session of a call that carries no credential of its own."""
    if request.headers.get("authorization"):
        return None
    return session_token(request)


def check_csrf(request: Request, token: str) -> None:
    if request.method in SAFE_METHODS:
        return
    client = request.headers.get(CSRF_CLIENT, "")
    sent = request.headers.get(CSRF_TOKEN, "")
    expected = token_for_prefect_ui(token, client)
    if not client or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden(
            "Invalid CSRF token: reload the Prefect UI (rule: ui_csrf).", code="ui_csrf"
        )


def csrf_token_body(request: Request, token: str) -> dict[str, Any]:
    """Prefect's `CsrfToken` for `GET /csrf-token?client=...`."""
    client = request.query_params.get("client", "")
    if not 1 <= len(client) <= 200:
        raise Invalid("client must be 1-200 characters.", field="client")
    now = utcnow()
    return {
        "id": str(uuid.uuid4()),
        "created": now.isoformat(),
        "updated": now.isoformat(),
        "token": token_for_prefect_ui(token, client),
        "client": client,
        "expiration": (now + CSRF_LIFETIME).isoformat(),
    }
