"""The signed-in user's personal API tokens: create (the secret shown once, on the answer
to the form, never again), list, revoke. Same services as /me/tokens.

With two-factor on, minting a token needs a session that passed it within the last
minutes (`orgs.accounts.require_recent_second_factor`): the form then asks for a code,
confirmed in this session first (`orgs.two_factor.verify_session`, as
`POST /me/2fa/verify`), so the rule is the API's, decided by the same functions.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from api.deps import RateLimitsDep, SessionDep, SettingsDep
from api.errors import status_for
from api.web.core import redirect, render
from api.web.session import Viewer, ViewerDep
from orgs import accounts, sso, two_factor
from orgs.db import utcnow
from policies.errors import DomainError
from policies.two_factor import passed_recently

router = APIRouter()

EXPIRY_CHOICES = (("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year"))


def _page(
    request: Request,
    viewer: Viewer,
    session: SessionDep,
    *,
    code: int = 200,
    errors: dict[str, str] | None = None,
    created: str | None = None,
    name: str = "",
) -> Response:
    enrolled = two_factor.is_enrolled(session, viewer.user.id)
    return render(
        request,
        "tokens.html",
        viewer=viewer,
        status_code=code,
        tokens=accounts.list_tokens(session, viewer.user),
        needs_code=enrolled and not passed_recently(viewer.token.second_factor_at, utcnow()),
        errors=errors or {},
        created=created,
        name=name,
        expiry_choices=EXPIRY_CHOICES,
        now=utcnow(),
    )


@router.get("/account/tokens")
def tokens_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    return _page(request, viewer, session)


@router.post("/account/tokens")
def create_token(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    name: Annotated[str, Form(max_length=200)] = "",
    expires_in_days: Annotated[str, Form(max_length=8)] = "",
    code: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    limits.hit("tokens", str(viewer.user.id))
    days = int(expires_in_days) if expires_in_days.isdigit() else None
    try:
        if code.strip():
            two_factor.verify_session(
                session, settings, viewer.user, code.strip(), token=viewer.token
            )
        issued = accounts.create_personal_token(
            session, viewer.user, name=name, expires_in_days=days, via=viewer.token
        )
    except DomainError as exc:
        session.rollback()
        where = getattr(exc, "field", None) or (
            "code" if "2fa" in exc.code or "code" in exc.code else "name"
        )
        return _page(
            request, viewer, session, code=status_for(exc), errors={where: exc.detail}, name=name
        )
    if viewer.token.sso_provider:  # counts as that sign-in for `sso.required`, as the API's
        sso.inherit(issued.record, viewer.token)
        session.commit()
    # Shown once, on this answer only (the page is never cached: core.SECURITY_HEADERS).
    return _page(request, viewer, session, created=issued.token)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(viewer: ViewerDep, session: SessionDep, token_id: uuid.UUID) -> Response:
    accounts.revoke_token(session, viewer.user, token_id)
    return redirect("/account/tokens", notice="token_revoked")
