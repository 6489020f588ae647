"""Accounts: sign-up, login (throttled: orgs.login_throttle), logout, personal tokens."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orgs import login_throttle, security, two_factor
from orgs.config import Settings, get_settings
from orgs.db import utcnow
from orgs.models import ApiToken, User
from policies.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from policies.names import refuse_bidi
from policies.throttle import address_key
from policies.two_factor import RECENT_SECOND_FACTOR, passed_recently

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]{1,255}\.[^@\s\x00-\x1f]{1,63}$")
MAX_TOKEN_DAYS = 3650


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # the secret, shown once
    record: ApiToken


@dataclass(frozen=True, slots=True)
class SecondFactorPending:
    """A right password of a user with two-factor: the code is still to come."""

    ticket: str  # exchanged once, with a code, for a session (`complete_login`)
    expires_at: datetime


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 320 or not EMAIL_RE.match(email):
        raise Invalid("That is not a valid email address.", field="email")
    return email


def validate_name(name: str) -> str:
    refuse_bidi(name, field="name")
    if not NAME_RE.fullmatch(name):
        raise Invalid(
            "Names are 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            field="name",
        )
    return name


def validate_password(password: str) -> str:
    if len(password) < 8:
        raise Invalid("Passwords need at least 8 characters.", field="password")
    if len(password) > 1024:
        raise Invalid("Passwords may have at most 1024 characters.", field="password")
    return password


def _issue(
    session: Session, user: User, kind: str, name: str, expires_at: datetime | None
) -> IssuedToken:
    secret = security.new_token(kind)
    record = ApiToken(
        user_id=user.id,
        kind=kind,
        name=name,
        token_hash=security.hash_token(secret),
        prefix=security.token_prefix(secret),
        expires_at=expires_at,
    )
    record.user = user
    session.add(record)
    return IssuedToken(secret, record)


def _session_expiry() -> datetime:
    return utcnow() + timedelta(days=get_settings().session_token_days)


# One answer for a taken e-mail and a taken name, so sign-up does not say which e-mails
# have accounts (see `signup`).
_TAKEN = (
    "An account cannot be created with that email and name. If you already have an "
    "account, sign in; otherwise choose another name."
)


def signup(session: Session, *, email: str, name: str, password: str) -> tuple[User, IssuedToken]:
    """Create an account and its first session.

    Without e-mail verification a sign-up cannot hide that *something* is taken, so a
    taken e-mail and a taken name get the same answer (409 `email_or_name_taken`), and
    the password is hashed before the check so both answers take the same time. What is
    left (trying an e-mail with a fresh name) is slowed by `CSHARE_RATE_LIMIT_SIGNUP`.
    """
    email = normalize_email(email)
    validate_name(name)
    validate_password(password)
    password_hash = security.hash_password(password)
    taken = session.scalars(select(User).where((User.email == email) | (User.name == name))).first()
    if taken is not None:
        raise Conflict(_TAKEN, code="email_or_name_taken")
    user = User(email=email, name=name, password_hash=password_hash)
    session.add(user)
    issued = _issue(session, user, "session", "signup", _session_expiry())
    try:
        session.commit()
    except IntegrityError as exc:  # a concurrent sign-up won the race
        session.rollback()
        raise Conflict(_TAKEN, code="email_or_name_taken") from exc
    return user, issued


def login(
    session: Session, *, email: str, password: str, address: str, settings: Settings
) -> IssuedToken | SecondFactorPending:
    """Check the password, throttled per account and per client address.

    Unknown e-mails and wrong passwords give the same answer in the same time, and are
    throttled alike (`orgs.login_throttle`: the attempt is counted before the check and
    given back when the password is right; a right password also resets the account).
    A user with two-factor gets a one-time ticket instead of a session.
    """
    account = email.strip().lower()[:320]  # as normalize_email has it, valid or not
    keys: dict[login_throttle.Kind, str] = {"account": account, "address": address_key(address)}
    reserved = login_throttle.reserve(
        session, keys, login_throttle.policies_from(settings), time.time()
    )
    user = (
        session.scalars(select(User).where(User.email == account)).first()
        if EMAIL_RE.match(account)  # no account has any other (nor a NUL to upset the driver)
        else None
    )
    # Counted and unlocked before the slow hash, so other sign-ins do not wait on it.
    session.commit()
    password_hash = user.password_hash if user else security.dummy_password_hash()
    if not security.verify_password(password_hash, password) or user is None:
        raise Unauthenticated("Wrong email or password.", code="bad_credentials")
    login_throttle.succeeded(session, reserved, time.time(), settings.login_forget_after_s)
    if two_factor.is_enrolled(session, user.id):
        ticket, expires = two_factor.issue_ticket(session, user)
        session.commit()
        return SecondFactorPending(ticket, expires)
    issued = _issue(session, user, "session", "login", _session_expiry())
    session.commit()
    return issued


def complete_login(session: Session, *, ticket: str, code: str, settings: Settings) -> IssuedToken:
    """The second step: a live ticket and a right code (or recovery code) -> a session
    that counts as having passed two-factor. The ticket is spent; a wrong code leaves it
    for another try (codes are throttled per account)."""
    row, user = two_factor.ticket_user(session, ticket)
    two_factor.check_code(session, settings, user, code)
    session.delete(row)
    issued = _issue(session, user, "session", "login", _session_expiry())
    two_factor.mark_passed(issued.record)
    session.commit()
    return issued


def authenticate(session: Session, token: str) -> tuple[User, ApiToken]:
    """The user behind a session or personal token; 401 for anything else."""
    record = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == security.hash_token(token))
    ).first()
    now = utcnow()
    if (
        record is None
        or record.revoked_at is not None
        or (record.expires_at is not None and record.expires_at <= now)
    ):
        raise Unauthenticated("The token is missing, expired or revoked.", code="bad_token")
    return record.user, record


def logout(session: Session, token: ApiToken) -> None:
    token.revoked_at = utcnow()
    session.commit()


def require_recent_second_factor(session: Session, user: User, via: ApiToken) -> None:
    """Minting a token with two-factor on needs a session that passed it lately: a
    stolen older session (or a personal token) cannot mint long-lived tokens."""
    if not two_factor.is_enrolled(session, user.id):
        return
    if via.kind == "session" and passed_recently(via.second_factor_at, utcnow()):
        return
    minutes = int(RECENT_SECOND_FACTOR.total_seconds() // 60)
    raise Forbidden(
        f"Creating a token needs a sign-in session that passed two-factor authentication "
        f"in the last {minutes} minutes: confirm a code first (`cshare account 2fa verify`, "
        'or POST /me/2fa/verify with {"code"}), or sign in again with your code.',
        code="recent_2fa_required",
    )


def create_personal_token(
    session: Session,
    user: User,
    *,
    name: str,
    expires_in_days: int | None,
    via: ApiToken | None = None,
) -> IssuedToken:
    """`via`: the credential asking; checked for a recent second factor when given."""
    if via is not None:
        require_recent_second_factor(session, user, via)
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise Invalid("Token names are 1-100 characters.", field="name")
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise Invalid(
            f"expires_in_days must be between 1 and {MAX_TOKEN_DAYS}.", field="expires_in_days"
        )
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    issued = _issue(session, user, "personal", name, expires)
    session.commit()
    return issued


def list_tokens(session: Session, user: User) -> list[ApiToken]:
    return list(
        session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.kind == "personal")
            .order_by(ApiToken.created_at)
        )
    )


def revoke_token(session: Session, user: User, token_id: uuid.UUID) -> None:
    record = session.get(ApiToken, token_id)
    if record is None or record.user_id != user.id or record.kind != "personal":
        raise NotFound("No such token.")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    session.commit()
