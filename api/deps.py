"""FastAPI dependencies: the database session, the caller, and the permission guard.

Every route inside an organization declares its permission with `Requires(...)`; the
route x role test walks these, so a route without a rule fails it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from orgs import accounts
from orgs import machines as machine_registry
from orgs.config import Settings
from orgs.context import OrgContext, member_context
from orgs.db import Database
from orgs.models import ApiToken, Machine, User
from orgs.rate_limits import RateLimits
from policies.errors import Unauthenticated
from policies.permissions import Permission

_bearer = HTTPBearer(auto_error=False, description="A session, personal or machine token.")


# Dependencies that only read app state or check a value are `async def`: FastAPI runs a
# plain `def` dependency in the thread pool, one hop per dependency and request.


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; reads do not take SQLite's write lock."""
    db: Database = request.app.state.db
    write = request.method not in ("GET", "HEAD", "OPTIONS")
    with db.session(write=write) as session:
        yield session


def get_write_session(request: Request) -> Iterator[Session]:
    """For the few GET routes that write (sign-in redirects): SQLite's write lock is taken
    at BEGIN, since a read snapshot upgraded to a write fails at once if another writer
    committed meanwhile ("database is locked", no busy wait)."""
    db: Database = request.app.state.db
    with db.session(write=True) as session:
        yield session


async def get_rate_limits(request: Request) -> RateLimits:
    limits: RateLimits = request.app.state.rate_limits
    return limits


SessionDep = Annotated[Session, Depends(get_session)]
WriteSessionDep = Annotated[Session, Depends(get_write_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RateLimitsDep = Annotated[RateLimits, Depends(get_rate_limits)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_auth(session: SessionDep, credentials: Credentials) -> tuple[User, ApiToken]:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("Sign in first: send 'Authorization: Bearer <token>'.")
    return accounts.authenticate(session, credentials.credentials)


AuthDep = Annotated[tuple[User, ApiToken], Depends(get_auth)]


async def get_current_user(auth: AuthDep) -> User:
    return auth[0]


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_org_context(
    session: SessionDep, auth: AuthDep, org: Annotated[str, Path(max_length=64)]
) -> OrgContext:
    user, token = auth
    return member_context(session, org, user, token=token)


def get_machine(session: SessionDep, credentials: Credentials) -> Machine:
    """The machine behind a machine token (agent routes); user tokens get 401 here."""
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("Send the machine token: 'Authorization: Bearer <token>'.")
    return machine_registry.authenticate(session, credentials.credentials)


CurrentMachine = Annotated[Machine, Depends(get_machine)]


class Requires:
    """`Depends(Requires(Permission.x))`: the caller is a member and their role allows x."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, ctx: Annotated[OrgContext, Depends(get_org_context)]) -> OrgContext:
        ctx.require(self.permission)
        return ctx

    def __repr__(self) -> str:
        return f"Requires({self.permission.value})"
