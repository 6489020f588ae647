"""TOTP two-factor authentication: enrolment, codes, recovery codes, sign-in tickets.

What is stored, per user:
- the TOTP secret, encrypted with the server key (`orgs.secret_box`, like org secrets):
  the server must read it back to compute codes, so it cannot be hashed;
- the last time step a code was accepted for, so a code (or an older one) is never
  accepted twice, even within its 30 seconds;
- ten single-use recovery codes, stored as SHA-256 of (user id, code). A fast hash is
  enough: each code is 10 random characters from 31 (~49 bits), not something a person
  chose, so a leaked table cannot be reversed by trying likely values, and guessing
  against the server is throttled like the TOTP codes. A slow hash would make every
  recovery attempt pay for up to ten argon2 checks.

Wrong codes are throttled per account with the sign-in throttle's rows and arithmetic
(`orgs.login_throttle`, `policies.throttle`), under a key of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from orgs import audit, login_throttle, secret_box
from orgs.config import Settings
from orgs.db import Base, UTCDateTime, utcnow
from orgs.models import ApiToken, User
from policies.errors import Conflict, Invalid, TooManyAttempts, Unauthenticated
from policies.two_factor import candidate_steps

ISSUER = "Compute Share"
RECOVERY_CODES = 10
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper
RECOVERY_LENGTH = 10
TICKET_TTL = timedelta(minutes=5)
TICKET_PREFIX = "cs_2fa_"
TOTP_DIGITS = 6

# SQLite only autoincrements INTEGER; the step fits either way (about 5.9e7 today).
_Step = BigInteger().with_variant(Integer(), "sqlite")


class UserTwoFactor(Base):
    """A user's TOTP secret: pending until confirmed with a first code (`enabled_at`)."""

    __tablename__ = "user_two_factor"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_step: Mapped[int] = mapped_column(_Step, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RecoveryCode(Base):
    __tablename__ = "two_factor_recovery_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class LoginTicket(Base):
    """The answer to a right password of a user with 2FA: exchanged, with a code, for a
    session once (`orgs.accounts.complete_login`). Only the SHA-256 is stored."""

    __tablename__ = "login_tickets"

    ticket_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True, slots=True)
class Status:
    enabled: bool
    enabled_at: datetime | None
    recovery_codes_left: int


@dataclass(frozen=True, slots=True)
class Enrolment:
    secret: str  # base32, for typing into an app by hand
    uri: str  # otpauth://totp/..., what the QR code holds


# ------------------------------------------------------------------ reading


def _row(session: Session, user_id: uuid.UUID, *, lock: bool = False) -> UserTwoFactor | None:
    stmt = select(UserTwoFactor).where(UserTwoFactor.user_id == user_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.scalars(stmt).first()


def is_enrolled(session: Session, user_id: uuid.UUID) -> bool:
    enabled = session.scalar(
        select(UserTwoFactor.enabled_at).where(UserTwoFactor.user_id == user_id)
    )
    return enabled is not None


def enrolled_among(session: Session, user_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    ids = list(user_ids)
    if not ids:
        return set()
    return set(
        session.scalars(
            select(UserTwoFactor.user_id).where(
                UserTwoFactor.user_id.in_(ids), UserTwoFactor.enabled_at.is_not(None)
            )
        )
    )


def status(session: Session, user: User) -> Status:
    row = _row(session, user.id)
    left = session.scalar(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
    )
    enabled_at = row.enabled_at if row is not None else None
    return Status(enabled_at is not None, enabled_at, int(left or 0) if enabled_at else 0)


# ------------------------------------------------------------------ codes


def _totp(settings: Settings, row: UserTwoFactor, user: User) -> pyotp.TOTP:
    secret = secret_box.decrypt(
        settings, row.secret_ciphertext, label=f"two-factor secret of user '{user.name}'"
    )
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, issuer=ISSUER, name=user.email)


def _normalize(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def _recovery_hash(user_id: uuid.UUID, code: str) -> str:
    return hashlib.sha256(f"{user_id}\x00{_normalize(code)}".encode()).hexdigest()


def _match_totp(totp: pyotp.TOTP, row: UserTwoFactor, code: str, now: datetime) -> bool:
    """True (and the step remembered) when `code` is the code of an unused step."""
    current = totp.timecode(now)
    for step in candidate_steps(current, row.last_step):
        if hmac.compare_digest(totp.generate_otp(step), code):
            row.last_step = step
            return True
    return False


def _use_recovery(session: Session, user_id: uuid.UUID, code: str) -> bool:
    record = session.get(RecoveryCode, _recovery_hash(user_id, code), with_for_update=True)
    if record is None or record.user_id != user_id or record.used_at is not None:
        return False
    record.used_at = utcnow()
    return True


def _wrong_code() -> Invalid:
    return Invalid(
        "That code is not right, or was used already: enter the current code from your "
        "authenticator app (or an unused recovery code).",
        field="code",
        code="bad_2fa_code",
    )


def check_code(
    session: Session,
    settings: Settings,
    user: User,
    code: str,
    *,
    allow_recovery: bool = True,
    pending: bool = False,
) -> str:
    """Check a TOTP code (or a recovery code) of `user`, throttled per account.

    Returns "totp" or "recovery"; 422 `bad_2fa_code` when wrong or already used, 429
    with Retry-After when too many were wrong. A wrong code is committed (counted); a
    right one is marked used in the open transaction, which the caller commits.
    `pending`: check against a secret being enrolled (not yet enabled).
    """
    key: dict[login_throttle.Kind, str] = {"account": f"2fa\x00{user.id}"}
    try:
        reserved = login_throttle.reserve(
            session, key, login_throttle.policies_from(settings), time.time()
        )
    except TooManyAttempts as exc:
        raise TooManyAttempts(
            f"Too many wrong codes; try again in {exc.retry_after_s} seconds.",
            retry_after_s=exc.retry_after_s,
        ) from None
    row = _row(session, user.id, lock=True)
    given = _normalize(code)
    method: str | None = None
    if row is not None and (row.enabled_at is None) == pending:
        if len(given) == TOTP_DIGITS and given.isdigit():
            if _match_totp(_totp(settings, row, user), row, given, utcnow()):
                method = "totp"
        elif allow_recovery and not pending and _use_recovery(session, user.id, given):
            method = "recovery"
    if method is None:
        session.commit()  # the failure stays counted
        raise _wrong_code()
    login_throttle.succeeded(session, reserved, time.time(), settings.login_forget_after_s)
    if method == "recovery":  # worth a line in the account's record: the device may be lost
        _record(session, user, "2fa.recovery_code_used")
    return method


def _record(session: Session, user: User, action: str) -> None:
    """An account event (no organization) in the audit table."""
    audit.record(
        session, org_id=None, actor=user, action=action, target_type="user", target_id=user.id
    )


# ------------------------------------------------------------------ enrolment


def begin(session: Session, settings: Settings, user: User) -> Enrolment:
    """A fresh secret, pending until `confirm`; a pending one is replaced."""
    row = _row(session, user.id, lock=True)
    if row is not None and row.enabled_at is not None:
        raise Conflict(
            "Two-factor authentication is already on. Disable it first to move it to a new device.",
            code="2fa_already_enabled",
        )
    secret = pyotp.random_base32()
    ciphertext = secret_box.encrypt(settings, secret)
    if row is None:
        session.add(UserTwoFactor(user_id=user.id, secret_ciphertext=ciphertext, last_step=0))
    else:
        row.secret_ciphertext, row.last_step, row.created_at = ciphertext, 0, utcnow()
    session.commit()
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER)
    return Enrolment(secret=secret, uri=uri)


def pending(session: Session, settings: Settings, user: User) -> Enrolment | None:
    """The enrolment begun but not confirmed yet (the page shows its QR code again)."""
    row = _row(session, user.id)
    if row is None or row.enabled_at is not None:
        return None
    totp = _totp(settings, row, user)
    return Enrolment(secret=totp.secret, uri=totp.provisioning_uri(issuer_name=ISSUER))


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def confirm(
    session: Session, settings: Settings, user: User, code: str, *, token: ApiToken
) -> list[str]:
    """Turn 2FA on with the first code from the app; the ten recovery codes (shown once).

    The calling session counts as having just passed two-factor (it proved a code).
    """
    row = _row(session, user.id)
    if row is None or row.enabled_at is not None:
        raise Conflict(
            "Nothing to confirm: start with POST /me/2fa/setup (`cshare account 2fa enable`)."
            if row is None
            else "Two-factor authentication is already on.",
            code="2fa_not_pending" if row is None else "2fa_already_enabled",
        )
    check_code(session, settings, user, code, pending=True)
    row.enabled_at = utcnow()
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    session.add_all(
        RecoveryCode(code_hash=_recovery_hash(user.id, c), user_id=user.id) for c in codes
    )
    mark_passed(token)
    _record(session, user, "2fa.enabled")
    session.commit()
    return codes


def disable(session: Session, settings: Settings, user: User, code: str) -> None:
    """Turn 2FA off; needs a current code (or a recovery code, for a lost device)."""
    if not is_enrolled(session, user.id):
        raise Conflict("Two-factor authentication is not on.", code="2fa_not_enabled")
    check_code(session, settings, user, code)
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    session.execute(delete(UserTwoFactor).where(UserTwoFactor.user_id == user.id))
    _record(session, user, "2fa.disabled")
    session.commit()


def mark_passed(token: ApiToken) -> None:
    """The session just proved a code (personal tokens never count as sessions)."""
    if token.kind == "session":
        token.second_factor_at = utcnow()


def verify_session(
    session: Session, settings: Settings, user: User, code: str, *, token: ApiToken
) -> None:
    """Re-confirm a code in a signed-in session (before minting a personal token)."""
    if not is_enrolled(session, user.id):
        raise Conflict("Two-factor authentication is not on.", code="2fa_not_enabled")
    if token.kind != "session":
        raise Invalid(
            "Only a sign-in session can be confirmed with a code, not a personal token.",
            field="token",
            code="session_required",
        )
    check_code(session, settings, user, code)
    mark_passed(token)
    session.commit()


def reseal(session: Session, settings: Settings) -> int:
    """Re-encrypt every TOTP secret with the first key (`cshare db rotate-secrets`). No
    commit: the caller commits with the org secrets, all or none."""
    rows = session.scalars(select(UserTwoFactor).with_for_update()).all()
    for row in rows:
        row.secret_ciphertext = secret_box.reencrypt(
            settings, row.secret_ciphertext, label=f"two-factor secret of user {row.user_id}"
        )
    return len(rows)


# ------------------------------------------------------------------ sign-in tickets


def issue_ticket(session: Session, user: User) -> tuple[str, datetime]:
    """A one-time ticket for the second step of signing in. No commit."""
    ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
    expires = utcnow() + TICKET_TTL
    now = utcnow()
    session.execute(delete(LoginTicket).where(LoginTicket.expires_at <= now))
    session.add(
        LoginTicket(
            ticket_hash=hashlib.sha256(ticket.encode()).hexdigest(),
            user_id=user.id,
            expires_at=expires,
        )
    )
    return ticket, expires


def ticket_user(session: Session, ticket: str) -> tuple[LoginTicket, User]:
    """The live ticket and its user; 401 `bad_ticket` otherwise."""
    row = session.get(LoginTicket, hashlib.sha256(ticket.encode()).hexdigest())
    user = session.get(User, row.user_id) if row is not None else None
    if row is None or user is None or row.expires_at <= utcnow():
        raise Unauthenticated(
            "The sign-in ticket is unknown, used or expired: sign in again with your password.",
            code="bad_ticket",
        )
    return row, user
