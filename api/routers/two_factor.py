"""Two-factor for the signed-in user: /me/2fa (status, setup, confirm, verify, disable)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from api.deps import AuthDep, CurrentUser, SessionDep, SettingsDep
from orgs import two_factor

router = APIRouter(tags=["accounts"])


class TwoFactorStatusOut(BaseModel):
    enabled: bool
    enabled_at: datetime | None
    recovery_codes_left: int


class SetupOut(BaseModel):
    secret: str = Field(description="Base32; type it into the app if it cannot scan.")
    otpauth_uri: str = Field(description="What the QR code holds (otpauth://totp/...).")


class CodeIn(BaseModel):
    code: str = Field(max_length=64, description="The app's current code (or a recovery code).")


class ConfirmOut(BaseModel):
    recovery_codes: list[str] = Field(
        description="Ten single-use codes for when the device is lost. Shown once."
    )


def _status(session: SessionDep, user: CurrentUser) -> TwoFactorStatusOut:
    s = two_factor.status(session, user)
    return TwoFactorStatusOut(
        enabled=s.enabled, enabled_at=s.enabled_at, recovery_codes_left=s.recovery_codes_left
    )


@router.get("/me/2fa")
def get_status(user: CurrentUser, session: SessionDep) -> TwoFactorStatusOut:
    return _status(session, user)


@router.post("/me/2fa/setup")
def setup(user: CurrentUser, session: SessionDep, settings: SettingsDep) -> SetupOut:
    """A new secret, pending until confirmed with a code (a pending one is replaced)."""
    enrolment = two_factor.begin(session, settings, user)
    return SetupOut(secret=enrolment.secret, otpauth_uri=enrolment.uri)


@router.post("/me/2fa/confirm", status_code=status.HTTP_201_CREATED)
def confirm(body: CodeIn, auth: AuthDep, session: SessionDep, settings: SettingsDep) -> ConfirmOut:
    """Turns two-factor on with the first code from the app."""
    user, token = auth
    codes = two_factor.confirm(session, settings, user, body.code, token=token)
    return ConfirmOut(recovery_codes=codes)


@router.post("/me/2fa/verify", status_code=status.HTTP_204_NO_CONTENT)
def verify(body: CodeIn, auth: AuthDep, session: SessionDep, settings: SettingsDep) -> None:
    """Confirms a code in this session (needed within 10 minutes before creating a token)."""
    user, token = auth
    two_factor.verify_session(session, settings, user, body.code, token=token)


@router.delete("/me/2fa", status_code=status.HTTP_204_NO_CONTENT)
def disable(body: CodeIn, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> None:
    """Turns two-factor off; needs a current code (or a recovery code)."""
    two_factor.disable(session, settings, user, body.code)
