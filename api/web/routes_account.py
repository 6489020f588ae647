"""Sign up, sign in, sign out, first sign-in (create or join an org), invitation links."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.client_address import ClientAddress
from api.deps import RateLimitsDep, SessionDep, SettingsDep
from api.errors import status_for
from api.web.core import redirect, render, safe_next
from api.web.session import (
    MaybeViewer,
    Viewer,
    ViewerDep,
    clear_session_cookie,
    set_session_cookie,
)
from orgs import accounts, invitations, organizations, security
from orgs.models import Invitation, Membership, Organization
from policies.errors import DomainError, Invalid, TooManyAttempts
from policies.throttle import address_key

router = APIRouter()

Text = Annotated[str, Form(max_length=2000)]
Secret = Annotated[str, Form(max_length=1024)]
Next = Annotated[str, Form(max_length=2000)]
Code = Annotated[str, Path(min_length=1, max_length=128)]


def _field_of(exc: DomainError) -> str | None:
    return exc.field if isinstance(exc, Invalid) else None


# ------------------------------------------------------------------ landing


@router.get("/")
def home(viewer: MaybeViewer, session: SessionDep, notice: str = "") -> Response:
    # A notice from the action that led here (e.g. "left", "deleted") is passed on.
    if viewer is None:
        return redirect("/login", notice=notice[:32])
    mine = organizations.list_mine(session, viewer.user)
    if not mine:
        return redirect("/welcome", notice=notice[:32])
    return redirect(f"/orgs/{mine[0][0].slug}", notice=notice[:32])


@router.get("/switch")
def switch(org: str = "") -> Response:
    """The org switcher's target without JavaScript (`?org=<slug>`)."""
    slug = org.strip()
    return redirect(f"/orgs/{slug}" if slug.isascii() and slug.replace("-", "").isalnum() else "/")


# ------------------------------------------------------------------ sign in / up / out


@router.get("/login")
def login_page(request: Request, viewer: MaybeViewer, next: str = "") -> Response:
    if viewer is not None:
        return redirect(safe_next(next))
    return render(request, "login.html", next=safe_next(next, ""), form={})


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    address: ClientAddress,
    email: Text,
    password: Secret,
    next: Next = "",
) -> Response:
    # The API's rate limit and throttle (per account and address), with their answers.
    try:
        limits.hit("login", address_key(address))
        issued = accounts.login(
            session, email=email, password=password, address=address, settings=settings
        )
    except DomainError as exc:
        return _refused(
            request,
            exc,
            "login.html",
            next=safe_next(next, ""),
            form={"email": email},
            error=exc.detail,
        )
    if isinstance(issued, accounts.SecondFactorPending):
        return render(request, "login_2fa.html", next=safe_next(next, ""), ticket=issued.ticket)
    response = redirect(safe_next(next))
    set_session_cookie(response, request, issued.token, issued.record.expires_at)
    return response


@router.post("/login/2fa")
def login_second_factor(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    address: ClientAddress,
    ticket: Annotated[str, Form(max_length=200)],
    code: Annotated[str, Form(max_length=64)],
    next: Next = "",
) -> Response:
    """The code after the password (the ticket came in the form `POST /login` showed)."""
    try:
        limits.hit("login", address_key(address))
        issued = accounts.complete_login(session, ticket=ticket, code=code, settings=settings)
    except DomainError as exc:
        if exc.code == "bad_ticket":  # expired or used: back to the password
            return redirect("/login", notice="2fa_expired", next=safe_next(next, ""))
        return _refused(
            request,
            exc,
            "login_2fa.html",
            next=safe_next(next, ""),
            ticket=ticket,
            error=exc.detail,
        )
    response = redirect(safe_next(next))
    set_session_cookie(response, request, issued.token, issued.record.expires_at)
    return response


@router.get("/signup")
def signup_page(request: Request, viewer: MaybeViewer, next: str = "") -> Response:
    if viewer is not None:
        return redirect(safe_next(next))
    return render(request, "signup.html", next=safe_next(next, ""), form={})


@router.post("/signup")
def signup(
    request: Request,
    session: SessionDep,
    limits: RateLimitsDep,
    address: ClientAddress,
    email: Text,
    name: Text,
    password: Secret,
    next: Next = "",
) -> Response:
    try:
        limits.hit("signup", address_key(address))
        _user, issued = accounts.signup(session, email=email, name=name, password=password)
    except DomainError as exc:
        # A field's own mistake is shown beside it; "taken" and "too many" above the
        # form (which of e-mail or name is taken is not said: see accounts.signup).
        field = _field_of(exc)
        return _refused(
            request,
            exc,
            "signup.html",
            next=safe_next(next, ""),
            form={"email": email, "name": name},
            errors={field: exc.detail} if field else {},
            error=None if field else exc.detail,
        )
    # A new account has no organization yet: set one up, unless an invitation waits.
    response = redirect(safe_next(next, "/welcome"))
    set_session_cookie(response, request, issued.token, issued.record.expires_at)
    return response


def _refused(request: Request, exc: DomainError, template: str, **context: Any) -> Response:
    """The form again with the error, its API status and (when throttled) Retry-After."""
    response = render(request, template, status_code=status_for(exc), **context)
    if isinstance(exc, TooManyAttempts):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, viewer: MaybeViewer) -> Response:
    if viewer is not None:
        accounts.logout(session, viewer.token)  # the token is revoked, not just forgotten
    response = redirect("/login", notice="signed_out")
    clear_session_cookie(response, request)
    return response


# ------------------------------------------------------------------ first sign-in


def _welcome(
    request: Request,
    viewer: Viewer,
    session: Session,
    *,
    status_code: int = 200,
    create_errors: dict[str, str] | None = None,
    join_error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    return render(
        request,
        "welcome.html",
        viewer=viewer,
        status_code=status_code,
        orgs=organizations.list_mine(session, viewer.user),
        create_errors=create_errors or {},
        join_error=join_error,
        form=form or {},
    )


@router.get("/welcome")
def welcome(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    return _welcome(request, viewer, session)


@router.get("/orgs/new")
def new_org_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    return _welcome(request, viewer, session)


@router.post("/orgs/new")
def create_org(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    # Empty is allowed here so the service's own sentence is shown beside the field.
    name: Annotated[str, Form(max_length=100)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    try:
        org = organizations.create(
            session, viewer.user, name=name, slug=None, description=description or None
        )
    except DomainError as exc:
        return _welcome(
            request,
            viewer,
            session,
            status_code=422,
            create_errors={_field_of(exc) or "name": exc.detail},
            form={"name": name, "description": description},
        )
    return redirect(f"/orgs/{org.slug}", notice="created")


def _code_from(text: str) -> str:
    """The code alone, also when a whole invitation link was pasted."""
    text = text.strip()
    if "/invitations/" in text:
        text = text.rsplit("/invitations/", 1)[1]
    return text.split("?", 1)[0].strip("/ ")


def _accept(request: Request, viewer: Viewer, session: Session, code: str) -> Response:
    try:
        org, _membership = invitations.accept(session, viewer.user, code)
    except DomainError as exc:
        return _welcome(
            request,
            viewer,
            session,
            status_code=status_for(exc),
            join_error=exc.detail,
        )
    return redirect(f"/orgs/{org.slug}", notice="joined")


@router.post("/join")
def join(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    code: Annotated[str, Form(max_length=2000)],
) -> Response:
    return _accept(request, viewer, session, _code_from(code))


# ------------------------------------------------------------------ invitation links


@router.get("/invitations/{code}")
def invitation_page(
    request: Request, code: Code, viewer: MaybeViewer, session: SessionDep
) -> Response:
    """The link an inviter shares: sign in (or up) first, then one click joins."""
    if viewer is None:
        return redirect("/login", next=f"/invitations/{code}")
    inv = session.scalars(
        select(Invitation).where(Invitation.code_hash == security.hash_token(code))
    ).first()
    org = session.get(Organization, inv.org_id) if inv is not None else None
    state = invitations.state_of(inv).value if inv is not None else "unknown"
    member = (
        org is not None
        and session.scalar(
            select(Membership.id).where(
                Membership.org_id == org.id, Membership.user_id == viewer.user.id
            )
        )
        is not None
    )
    return render(
        request,
        "invitation.html",
        viewer=viewer,
        status_code=404 if inv is None else 200,
        code=code,
        invitation=inv,
        invited_org=org,
        state=state,
        already_member=member,
    )


@router.post("/invitations/{code}/accept")
def accept_invitation(
    request: Request, code: Code, viewer: ViewerDep, session: SessionDep
) -> Response:
    return _accept(request, viewer, session, code)
