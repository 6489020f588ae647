"""The sign-in throttle's state: one `login_throttle` row per account and per client address.

Kept in the database (not in process memory) so that every API replica applies the same
waits: an attacker spreading guesses over replicas gets no extra tries. Rows are keyed
by SHA-256 of (kind, key) so the table holds no e-mail or address in clear. The
arithmetic is in `policies.throttle`.

Each attempt is counted as a failure *before* the password is checked (`reserve`, under
a row lock), and given back if the password was right (`succeeded`). So concurrent
guesses fired at the moment a wait ends cannot all be checked: the first one starts the
next wait and the others are refused.

Unknown e-mails get rows like known ones: a throttled address or e-mail behaves the
same whether or not an account exists.

What a throttle cannot do: someone who guesses at an account the moment each wait ends
competes with the owner for that turn. The owner never waits longer than the current
delay for a turn, and such a guesser gets one guess per `login_delay_max_s` at most.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Float, Index, Integer, String, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from orgs.config import Settings
from orgs.db import Base
from policies.errors import TooManyAttempts
from policies.throttle import (
    ThrottlePolicy,
    ThrottleState,
    after_failure,
    retry_after,
    wait_s,
)

Kind = Literal["account", "address"]


class LoginThrottle(Base):
    __tablename__ = "login_throttle"
    __table_args__ = (Index("ix_login_throttle_last_failure_at", "last_failure_at"),)

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # Epoch seconds (floats): plain arithmetic and exact compare-and-set in `succeeded`.
    blocked_until: Mapped[float] = mapped_column(Float, default=0.0)
    last_failure_at: Mapped[float] = mapped_column(Float, default=0.0)


def policies_from(settings: Settings) -> dict[Kind, ThrottlePolicy]:
    def policy(free: int) -> ThrottlePolicy:
        return ThrottlePolicy(
            free_failures=free,
            base_delay_s=settings.login_delay_base_s,
            max_delay_s=settings.login_delay_max_s,
            forget_after_s=settings.login_forget_after_s,
        )

    return {
        "account": policy(settings.login_free_failures),
        "address": policy(settings.login_free_failures_per_address),
    }


def key_hash(kind: Kind, key: str) -> str:
    return hashlib.sha256(f"{kind}\x00{key}".encode()).hexdigest()


def _state(row: LoginThrottle) -> ThrottleState:
    return ThrottleState(row.failures, row.blocked_until, row.last_failure_at)


@dataclass(frozen=True, slots=True)
class Reserved:
    """What `reserve` wrote for one key, so `succeeded` can give it back exactly."""

    kind: Kind
    key_hash: str
    before: ThrottleState
    after: ThrottleState


def _ensure_rows(session: Session, hashes: list[str]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(LoginThrottle).values(
        [
            {"key_hash": h, "failures": 0, "blocked_until": 0.0, "last_failure_at": 0.0}
            for h in hashes
        ]
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["key_hash"]))


def reserve(
    session: Session,
    keys: dict[Kind, str],
    policies: dict[Kind, ThrottlePolicy],
    now: float,
) -> list[Reserved]:
    """Count an attempt as failed for every key, or raise `TooManyAttempts` while one waits.

    Leaves the transaction open (the caller commits, after reading what it needs), so
    the rows stay locked until then. A refused attempt writes nothing.
    """
    hashes = {kind: key_hash(kind, key) for kind, key in keys.items()}
    _ensure_rows(session, sorted(hashes.values()))
    # Locks in key order, the same in every request, so two requests cannot deadlock.
    rows = {
        row.key_hash: row
        for row in session.scalars(
            select(LoginThrottle)
            .where(LoginThrottle.key_hash.in_(hashes.values()))
            .order_by(LoginThrottle.key_hash)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    wait = max(wait_s(_state(rows[h]), now) for h in hashes.values())
    if wait > 0:
        session.rollback()
        seconds = retry_after(wait)
        raise TooManyAttempts(
            f"Too many failed sign-ins; try again in {seconds} seconds.",
            retry_after_s=seconds,
        )
    reserved = []
    for kind, h in hashes.items():
        row = rows[h]
        before = _state(row)
        after = after_failure(before, now, policies[kind])
        row.failures, row.blocked_until, row.last_failure_at = (
            after.failures,
            after.blocked_until,
            after.last_failure_at,
        )
        reserved.append(Reserved(kind, h, before, after))
    session.flush()
    return reserved


def succeeded(
    session: Session, reserved: list[Reserved], now: float, forget_after_s: float
) -> None:
    """The password was right: reset the account's failures, give the address its try back.

    The address keeps failures others made meanwhile: only this attempt is undone, and
    its wait only if no later attempt has replaced it. Also drops rows idle for longer
    than `forget_after_s` (they would be forgotten anyway). The caller commits.
    """
    for r in reserved:
        if r.kind == "account":
            session.execute(delete(LoginThrottle).where(LoginThrottle.key_hash == r.key_hash))
            continue
        undone = session.execute(
            update(LoginThrottle)
            .where(
                LoginThrottle.key_hash == r.key_hash,
                LoginThrottle.failures == r.after.failures,
                LoginThrottle.blocked_until == r.after.blocked_until,
                LoginThrottle.last_failure_at == r.after.last_failure_at,
            )
            .values(
                failures=r.before.failures,
                blocked_until=r.before.blocked_until,
                last_failure_at=r.before.last_failure_at,
            )
        )
        if getattr(undone, "rowcount", 0) == 0:  # others failed since: only drop ours
            session.execute(
                update(LoginThrottle)
                .where(LoginThrottle.key_hash == r.key_hash, LoginThrottle.failures > 0)
                .values(failures=LoginThrottle.failures - 1)
            )
    session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.last_failure_at < now - forget_after_s,
            LoginThrottle.blocked_until < now,
        )
    )
