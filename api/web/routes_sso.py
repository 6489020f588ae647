"""Sign in with a provider (OpenID Connect, GitHub): the buttons' targets, the callback,
confirming a link to an existing account, approving a terminal's sign-in.

The flow's logic is orgs.sso; here are the cookie that binds a sign-in to the browser
that started it, and the pages.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import RedirectResponse, Response

from api.client_address import ClientAddress
from api.deps import RateLimitsDep, SessionDep, SettingsDep, WriteSessionDep
from api.errors import status_for
from api.web.core import redirect, render, safe_next
from api.web.routes_settings import PageSettingsUpdate, _apply, _settings
from api.web.session import MaybeViewer, is_https, set_session_cookie
from orgs import sso
from orgs.models import SsoFlow
from orgs.sso_providers import provider_error
from policies.errors import DomainError, Invalid
from policies.throttle import address_key

router = APIRouter()

# The sign-in's state, held by the browser between start, callback and confirmations.
FLOW_COOKIE = "cshare_sso"
ProviderName = Annotated[str, Path(min_length=1, max_length=32)]


def _set_flow_cookie(response: Response, request: Request, state: str) -> None:
    response.set_cookie(
        FLOW_COOKIE,
        state,
        max_age=int(sso.FLOW_TTL.total_seconds()),
        path="/sso/",
        httponly=True,
        secure=is_https(request),
        samesite="lax",  # sent on the provider's top-level redirect back to us
    )


def _clear_flow_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        FLOW_COOKIE, path="/sso/", httponly=True, secure=is_https(request), samesite="lax"
    )


def _failed(request: Request, exc: DomainError) -> Response:
    response = render(
        request,
        "login.html",
        status_code=status_for(exc),
        next="",
        form={},
        error=exc.detail,
    )
    _clear_flow_cookie(response, request)
    return response


def _signed_in(request: Request, outcome: sso.Outcome) -> Response:
    assert outcome.issued is not None
    response = redirect(safe_next(outcome.next_url))
    set_session_cookie(response, request, outcome.issued.token, outcome.issued.record.expires_at)
    _clear_flow_cookie(response, request)
    return response


def _next_step(request: Request, outcome: sso.Outcome) -> Response:
    if outcome.kind == "signed_in":
        return _signed_in(request, outcome)
    return redirect("/sso/link" if outcome.kind == "link" else "/sso/approve")


@router.get("/sso/{provider}/start")
def start(
    request: Request,
    provider: ProviderName,
    session: WriteSessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    address: ClientAddress,
    next: str = "",
) -> Response:
    try:
        # Each start stores a row: counted like sign-ins (CSHARE_RATE_LIMIT_LOGIN).
        limits.hit("login", address_key(address))
        started = sso.start(
            session, settings, provider, purpose="web", next_url=safe_next(next, "")
        )
    except DomainError as exc:
        return _failed(request, exc)
    response = RedirectResponse(started.authorize_url, status_code=303)
    _set_flow_cookie(response, request, started.state)
    return response


@router.get("/sso/{provider}/callback")
def callback(
    request: Request,
    provider: ProviderName,
    session: WriteSessionDep,
    settings: SettingsDep,
    code: str = "",
    state: str = "",
    error: str = "",
    error_description: str = "",
) -> Response:
    try:
        if error or not code:
            # The provider's own words are shown as text, never trusted as markup.
            reason = (error_description or error or "no code was returned")[:200]
            raise provider_error(sso.provider_or_404(settings, provider), reason)
        outcome = sso.callback(
            session,
            settings,
            provider,
            state=state[:200],
            code=code[:2000],
            browser_state=request.cookies.get(FLOW_COOKIE),
        )
    except DomainError as exc:
        return _failed(request, exc)
    response = _next_step(request, outcome)
    if outcome.kind != "signed_in":
        _set_flow_cookie(response, request, state)  # CLI flows: the browser's binding
    return response


def _flow(request: Request, session: SessionDep, status: str) -> SsoFlow:
    return sso.flow_by_state(session, request.cookies.get(FLOW_COOKIE), status=status)


@router.get("/sso/link")
def link_page(
    request: Request, session: SessionDep, settings: SettingsDep, viewer: MaybeViewer
) -> Response:
    try:
        flow = _flow(request, session, "link")
    except DomainError as exc:
        return _failed(request, exc)
    provider = sso.provider_or_404(settings, flow.provider)
    same = viewer is not None and viewer.user.id == flow.user_id
    return render(
        request,
        "sso_link.html",
        viewer=viewer,
        email=flow.email,
        provider=provider.label,
        signed_in_same=same,
        error=None,
    )


@router.post("/sso/link")
def link(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    address: ClientAddress,
    viewer: MaybeViewer,
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    try:
        flow = _flow(request, session, "link")
        same = viewer is not None and viewer.user.id == flow.user_id
        if not same:
            limits.hit("login", address_key(address))  # a password guess, like /login
        outcome = sso.confirm_link(
            session,
            settings,
            flow,
            password=None if same else password,
            signed_in_as=viewer.user if same and viewer else None,
        )
    except DomainError as exc:
        flow_left = session.scalars(
            sso.select_flow(request.cookies.get(FLOW_COOKIE), "link")
        ).first()
        if flow_left is None:
            return _failed(request, exc)
        provider = sso.provider_or_404(settings, flow_left.provider)
        return render(
            request,
            "sso_link.html",
            status_code=status_for(exc),
            viewer=viewer,
            email=flow_left.email,
            provider=provider.label,
            signed_in_same=False,
            error=exc.detail,
        )
    return _next_step(request, outcome)


@router.get("/sso/approve")
def approve_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    try:
        flow = _flow(request, session, "approve")
    except DomainError as exc:
        return _failed(request, exc)
    provider = sso.provider_or_404(settings, flow.provider)
    return render(
        request,
        "sso_approve.html",
        user_code=flow.user_code,
        email=flow.email or "",
        provider=provider.label,
        done=False,
    )


@router.post("/sso/approve")
def approve(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    try:
        flow = _flow(request, session, "approve")
        provider = sso.provider_or_404(settings, flow.provider)
        sso.approve_cli(session, flow)
    except DomainError as exc:
        return _failed(request, exc)
    response = render(
        request, "sso_approve.html", user_code="", email="", provider=provider.label, done=True
    )
    _clear_flow_cookie(response, request)
    return response


@router.post("/orgs/{org}/settings/sso")
def save_sso_settings(
    request: Request,
    page: PageSettingsUpdate,
    settings: SettingsDep,
    provider: Annotated[str, Form(max_length=32)] = "",
    allowed_domains: Annotated[str, Form(max_length=5000)] = "",
    required: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """The settings page's "Single sign-on" panel (the same rules as the API's PUT)."""
    form = {"provider": provider, "allowed_domains": allowed_domains}
    domains = [d.strip() for d in allowed_domains.replace(",", "\n").splitlines() if d.strip()]
    changes = {
        "sso": {
            "provider": provider or None,
            "allowed_domains": domains,
            "required": required == "yes",
        }
    }
    try:
        sso.check_org_provider(settings, changes)
    except Invalid as exc:
        return _settings(request, page, code=422, errors={str(exc.field): exc.detail}, form=form)
    return _apply(request, page, form, changes=changes, prefix="sso")
