"""The signed-in user's profile page: two-factor enrolment (QR code), recovery codes,
turning it off. Same services as /me/2fa."""

from __future__ import annotations

from typing import Annotated

import segno
from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from api.deps import SessionDep, SettingsDep
from api.errors import status_for
from api.web.core import redirect, render
from api.web.session import ViewerDep
from orgs import notifications, two_factor
from policies.errors import DomainError

router = APIRouter()

Code = Annotated[str, Form(max_length=64)]

JOB_EMAIL_CHOICES = (
    ("failures", "only if it failed or crashed"),
    ("all", "whatever the outcome"),
    ("off", "never"),
)


def qr_data_uri(uri: str) -> str:
    """The otpauth URI as an SVG QR code, for an <img> (the CSP allows data: images)."""
    return str(segno.make(uri, error="m").svg_data_uri(scale=5, border=2))


def _profile(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    *,
    status_code: int = 200,
    error: str | None = None,
    recovery_codes: list[str] | None = None,
    notice_text: str | None = None,
) -> Response:
    enrolment = two_factor.pending(session, settings, viewer.user)
    return render(
        request,
        "profile.html",
        viewer=viewer,
        status_code=status_code,
        status=two_factor.status(session, viewer.user),
        enrolment=enrolment,
        qr=qr_data_uri(enrolment.uri) if enrolment else None,
        error=error,
        recovery_codes=recovery_codes,
        notice_text=notice_text,
        job_email=notifications.job_email(session, viewer.user.id),
        job_email_choices=JOB_EMAIL_CHOICES,
        email_available=notifications.smtp_configured(settings),
    )


@router.get("/account")
def profile(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    return _profile(request, viewer, session, settings)


@router.post("/account/2fa/setup")
def setup(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    try:
        two_factor.begin(session, settings, viewer.user)
    except DomainError as exc:
        return _profile(
            request, viewer, session, settings, status_code=status_for(exc), error=exc.detail
        )
    return redirect("/account")


@router.post("/account/2fa/confirm")
def confirm(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep, code: Code
) -> Response:
    try:
        codes = two_factor.confirm(session, settings, viewer.user, code, token=viewer.token)
    except DomainError as exc:
        response = _profile(
            request, viewer, session, settings, status_code=status_for(exc), error=exc.detail
        )
        if retry := getattr(exc, "retry_after_s", None):
            response.headers["Retry-After"] = str(retry)
        return response
    # Shown once, on this answer only (the page is never cached: core.SECURITY_HEADERS).
    return _profile(request, viewer, session, settings, recovery_codes=codes)


@router.post("/account/2fa/disable")
def disable(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep, code: Code
) -> Response:
    try:
        two_factor.disable(session, settings, viewer.user, code)
    except DomainError as exc:
        response = _profile(
            request, viewer, session, settings, status_code=status_for(exc), error=exc.detail
        )
        if retry := getattr(exc, "retry_after_s", None):
            response.headers["Retry-After"] = str(retry)
        return response
    return _profile(
        request, viewer, session, settings, notice_text="Two-factor authentication is off."
    )


@router.post("/account/notifications")
def set_notifications(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    job_email: Annotated[str, Form(max_length=16)],
) -> Response:
    """Same service as PUT /me/notifications."""
    try:
        notifications.set_job_email(session, viewer.user, job_email)
    except DomainError as exc:
        return _profile(
            request, viewer, session, settings, status_code=status_for(exc), error=exc.detail
        )
    return _profile(request, viewer, session, settings, notice_text="Job e-mail choice saved.")
