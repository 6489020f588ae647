"""Sign-in providers for API clients: which exist, and the CLI's sign-in.

`cshare login --sso NAME` (device-less, by polling): POST .../start returns the URL to
open in a browser, a code the browser page shows for the person to compare, and a poll
secret; after the person signs in at the provider and approves the code, the next
POST /auth/sso/poll returns a session token, once. Polling needs no port on the CLI's
machine, so it works over SSH and from containers.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from api.client_address import ClientAddress
from api.deps import CurrentUser, RateLimitsDep, SessionDep, SettingsDep
from orgs import sso
from policies.throttle import address_key

router = APIRouter(tags=["accounts"])

POLL_INTERVAL_S = 2


class ProviderOut(BaseModel):
    name: str
    display_name: str
    kind: str


class IdentityOut(BaseModel):
    provider: str
    subject: str
    email: str
    created_at: datetime
    last_login_at: datetime | None


class CliStartOut(BaseModel):
    url: str = Field(description="Open this in a browser to sign in.")
    user_code: str = Field(description="The browser shows it: approve only if it matches.")
    poll_token: str = Field(description="Secret for POST /auth/sso/poll. Keep it private.")
    expires_in: int
    interval: int = POLL_INTERVAL_S


class PollIn(BaseModel):
    poll_token: str = Field(min_length=1, max_length=200)


class PollOut(BaseModel):
    status: str = Field(description="`pending` (poll again) or `done` (token is set).")
    token: str | None = None
    expires_at: str | None = None


@router.get("/auth/sso/providers")
def list_providers(settings: SettingsDep) -> list[ProviderOut]:
    return [ProviderOut(**p.public()) for p in settings.sso_providers]


@router.post("/auth/sso/{provider}/start", status_code=status.HTTP_201_CREATED)
def start_cli(
    provider: str,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
    address: ClientAddress,
) -> CliStartOut:
    # Each start stores a row: counted like sign-ins (CSHARE_RATE_LIMIT_LOGIN).
    limits.hit("login", address_key(address))
    started = sso.start(session, settings, provider[:32], purpose="cli")
    assert started.poll_secret is not None
    return CliStartOut(
        url=started.authorize_url,
        user_code=started.user_code,
        poll_token=started.poll_secret,
        expires_in=started.expires_in_s,
    )


@router.post("/auth/sso/poll", responses={202: {"model": PollOut}})
def poll(body: PollIn, session: SessionDep, response: Response) -> PollOut:
    issued = sso.poll(session, body.poll_token)
    if issued is None:
        response.status_code = status.HTTP_202_ACCEPTED
        return PollOut(status="pending")
    expires = issued.record.expires_at
    return PollOut(
        status="done", token=issued.token, expires_at=expires.isoformat() if expires else None
    )


@router.get("/me/identities")
def my_identities(user: CurrentUser, session: SessionDep) -> list[IdentityOut]:
    """The provider accounts linked to yours (signing in through them opens it)."""
    return [
        IdentityOut(
            provider=i.provider,
            subject=i.subject,
            email=i.email,
            created_at=i.created_at,
            last_login_at=i.last_login_at,
        )
        for i in sso.identities(session, user.id)
    ]
