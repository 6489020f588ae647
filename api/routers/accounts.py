"""Accounts: /auth/signup, /auth/login (+ /auth/login/2fa), /auth/logout, /me, /me/tokens,
/me/notifications."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.client_address import ClientAddress
from api.deps import AuthDep, CurrentUser, RateLimitsDep, SessionDep, SettingsDep
from api.errors import error_body
from api.schemas import Page, TokenOut, UserOut
from orgs import accounts, notifications, sso
from policies.throttle import address_key

router = APIRouter(tags=["accounts"])


class SignupIn(BaseModel):
    email: str = Field(max_length=320)
    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class SignupOut(BaseModel):
    user: UserOut
    token: str


class LoginIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class LoginOut(BaseModel):
    token: str
    expires_at: str | None


class SecondFactorIn(BaseModel):
    ticket: str = Field(max_length=200, description="From the 401 `2fa_required` answer.")
    code: str = Field(
        max_length=64, description="The app's current 6-digit code, or a recovery code."
    )


class NewTokenIn(BaseModel):
    name: str = Field(max_length=100)
    expires_in_days: int | None = Field(default=90, ge=1, le=accounts.MAX_TOKEN_DAYS)


class NewTokenOut(BaseModel):
    token: str = Field(description="The secret. Shown once; store it now.")
    info: TokenOut


@router.post("/auth/signup", status_code=status.HTTP_201_CREATED)
def signup(
    body: SignupIn, session: SessionDep, limits: RateLimitsDep, address: ClientAddress
) -> SignupOut:
    limits.hit("signup", address_key(address))
    user, issued = accounts.signup(
        session, email=body.email, name=body.name, password=body.password
    )
    return SignupOut(user=UserOut.model_validate(user), token=issued.token)


def _login_out(issued: accounts.IssuedToken) -> LoginOut:
    expires = issued.record.expires_at
    return LoginOut(token=issued.token, expires_at=expires.isoformat() if expires else None)


@router.post(
    "/auth/login",
    response_model=LoginOut,
    responses={
        401: {
            "description": "Wrong e-mail or password; or, with `error: 2fa_required`, the "
            "password was right and a code is due: POST the `ticket` and the code to "
            "/auth/login/2fa (within `expires_at`)."
        }
    },
)
def login(
    body: LoginIn,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    address: ClientAddress,
) -> LoginOut | JSONResponse:
    limits.hit("login", address_key(address))
    result = accounts.login(
        session, email=body.email, password=body.password, address=address, settings=settings
    )
    if isinstance(result, accounts.SecondFactorPending):
        return JSONResponse(
            error_body(
                "2fa_required",
                "Two-factor authentication is on for this account: send the code from your "
                "authenticator app (or a recovery code) with this ticket to /auth/login/2fa.",
                ticket=result.ticket,
                expires_at=result.expires_at.isoformat(),
            ),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return _login_out(result)


@router.post("/auth/login/2fa")
def login_second_factor(
    body: SecondFactorIn,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    address: ClientAddress,
) -> LoginOut:
    """The second step of signing in: the ticket and a code -> a session (codes are
    throttled per account: 429 with Retry-After)."""
    limits.hit("login", address_key(address))
    return _login_out(
        accounts.complete_login(session, ticket=body.ticket, code=body.code, settings=settings)
    )


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(auth: AuthDep, session: SessionDep) -> None:
    accounts.logout(session, auth[1])


@router.get("/me")
def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)


@router.post("/me/tokens", status_code=status.HTTP_201_CREATED)
def create_token(
    body: NewTokenIn, auth: AuthDep, session: SessionDep, limits: RateLimitsDep
) -> NewTokenOut:
    user, via = auth
    limits.hit("tokens", str(user.id))
    issued = accounts.create_personal_token(
        session, user, name=body.name, expires_in_days=body.expires_in_days, via=via
    )
    if via.sso_provider:  # counts as that sign-in for `sso.required` (orgs.sso)
        sso.inherit(issued.record, via)
        session.commit()
    return NewTokenOut(token=issued.token, info=TokenOut.model_validate(issued.record))


@router.get("/me/tokens")
def list_tokens(user: CurrentUser, session: SessionDep) -> Page[TokenOut]:
    items = [TokenOut.model_validate(t) for t in accounts.list_tokens(session, user)]
    return Page(items=items, total=len(items), limit=len(items), offset=0)


@router.delete("/me/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> None:
    accounts.revoke_token(session, user, token_id)


class MyNotifications(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_email: notifications.JobEmail = Field(
        description="E-mail me when my job ends: off, failures (failed or crashed), all."
    )


class MyNotificationsOut(MyNotifications):
    email: str = Field(description="Where the mails go (your account's address).")
    email_available: bool = Field(description="Whether this server can send e-mail.")


def _my_notifications(
    user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> MyNotificationsOut:
    return MyNotificationsOut(
        job_email=notifications.job_email(session, user.id),
        email=user.email,
        email_available=notifications.smtp_configured(settings),
    )


@router.get("/me/notifications")
def get_my_notifications(
    user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> MyNotificationsOut:
    return _my_notifications(user, session, settings)


@router.put("/me/notifications")
def put_my_notifications(
    body: MyNotifications, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> MyNotificationsOut:
    notifications.set_job_email(session, user, body.job_email)
    return _my_notifications(user, session, settings)
