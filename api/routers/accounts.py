"""Accounts: /auth/signup, /auth/login, /auth/logout, /me, /me/tokens, /me/notifications."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from api.client_address import ClientAddress
from api.deps import AuthDep, CurrentUser, RateLimitsDep, SessionDep, SettingsDep
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


@router.post("/auth/login")
def login(
    body: LoginIn,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    address: ClientAddress,
) -> LoginOut:
    limits.hit("login", address_key(address))
    issued = accounts.login(
        session, email=body.email, password=body.password, address=address, settings=settings
    )
    expires = issued.record.expires_at
    return LoginOut(token=issued.token, expires_at=expires.isoformat() if expires else None)


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
    user, creator = auth
    limits.hit("tokens", str(user.id))
    issued = accounts.create_personal_token(
        session, user, name=body.name, expires_in_days=body.expires_in_days
    )
    if creator.sso_provider:  # counts as that sign-in for `sso.required` (orgs.sso)
        sso.inherit(issued.record, creator)
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
