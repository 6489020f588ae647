"""Signing in through a provider (OpenID Connect or GitHub): the flow's state, linking
identities to accounts, per-org auto-join, and the CLI's poll.

A sign-in is a row in `sso_flows` (any replica can take the callback), from `start` to
the session it ends in:

- web: start -> provider -> `callback` -> signed in (or `link`: an account already has
  the verified e-mail, and its owner must confirm with its password or while signed in);
- cli: `start(purpose="cli")` also returns a poll secret and a short code; after the
  callback the browser shows the code and asks to approve the terminal's sign-in (so a
  link sent by someone else cannot hand them a session); the CLI's next poll gets it.

Sessions made here carry `sso_provider`, which `sso.required` checks (orgs.context).
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import Select, delete, false, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orgs import audit, security
from orgs.accounts import IssuedToken, _issue, _session_expiry
from orgs.config import Settings
from orgs.db import utcnow
from orgs.models import ApiToken, Membership, Organization, SsoFlow, SsoIdentity, User
from orgs.sso_config import SsoProvider
from orgs.sso_providers import ProviderIdentity, authorization_url, identify
from policies.errors import Invalid, NotFound, Unauthenticated
from policies.permissions import Role
from policies.sso import may_auto_join

FLOW_TTL = timedelta(minutes=10)
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O, 1/I


@dataclass(frozen=True, slots=True)
class Started:
    authorize_url: str
    state: str  # the browser's binding to the flow (a cookie)
    poll_secret: str | None  # CLI only
    user_code: str  # CLI only
    expires_in_s: int


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["signed_in", "link", "approve"]
    flow: SsoFlow | None = None
    issued: IssuedToken | None = None
    next_url: str = "/"


def provider_or_404(settings: Settings, name: str) -> SsoProvider:
    provider = settings.sso_provider(name)
    if provider is None:
        raise NotFound(f"No sign-in provider '{name}' on this server.", code="sso_provider_unknown")
    return provider


def check_org_provider(settings: Settings, changes: Mapping[str, Any]) -> None:
    """An org's `sso.provider` must be one this server has (checked where settings are
    changed; the settings document itself does not know the server's providers)."""
    section = changes.get("sso")
    name = section.get("provider") if isinstance(section, Mapping) else None
    if isinstance(name, str) and settings.sso_provider(name) is None:
        known = ", ".join(p.name for p in settings.sso_providers) or "none configured"
        raise Invalid(
            f"No sign-in provider '{name}' on this server ({known}).", field="sso.provider"
        )


def callback_url(settings: Settings, provider: SsoProvider) -> str:
    return f"{settings.public_url.rstrip('/')}/sso/{provider.name}/callback"


def _user_code() -> str:
    raw = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def start(
    session: Session,
    settings: Settings,
    name: str,
    *,
    purpose: Literal["web", "cli"],
    next_url: str = "",
) -> Started:
    provider = provider_or_404(settings, name)
    now = utcnow()
    session.execute(delete(SsoFlow).where(SsoFlow.expires_at < now))  # old abandoned ones
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)  # 64 chars: RFC 7636 wants 43-128
    nonce = secrets.token_urlsafe(24)
    poll = secrets.token_urlsafe(32) if purpose == "cli" else None
    code = _user_code() if purpose == "cli" else ""
    url = authorization_url(
        provider,
        redirect_uri=callback_url(settings, provider),
        state=state,
        code_verifier=verifier,
        nonce=nonce,
    )
    session.add(
        SsoFlow(
            state_hash=security.hash_token(state),
            provider=provider.name,
            purpose=purpose,
            code_verifier=verifier,
            nonce=nonce,
            next_url=next_url,
            poll_hash=security.hash_token(poll) if poll else None,
            user_code=code,
            expires_at=now + FLOW_TTL,
        )
    )
    session.commit()
    return Started(url, state, poll, code, int(FLOW_TTL.total_seconds()))


def select_flow(state: str | None, status: str) -> Select[tuple[SsoFlow]]:
    """The live flow with this state and status (none for a missing state)."""
    stmt = select(SsoFlow).where(
        SsoFlow.state_hash == security.hash_token(state or ""),
        SsoFlow.status == status,
        SsoFlow.expires_at > utcnow(),
    )
    return stmt if state else stmt.where(false())


def flow_by_state(session: Session, state: str | None, *, status: str) -> SsoFlow:
    flow = session.scalars(select_flow(state, status)).first()
    if flow is None:
        raise Invalid(
            "This sign-in has expired or was already used; start again.", code="sso_expired"
        )
    return flow


def callback(
    session: Session,
    settings: Settings,
    name: str,
    *,
    state: str,
    code: str,
    browser_state: str | None,
) -> Outcome:
    """The provider sent the browser back: check the state, exchange the code, resolve
    the account. A web sign-in must come back to the browser that started it."""
    provider = provider_or_404(settings, name)
    flow = flow_by_state(session, state, status="started")
    if flow.provider != provider.name:
        raise Invalid("This sign-in was started for another provider.", code="sso_expired")
    if flow.purpose == "web" and not (
        browser_state and security.constant_time_equal(browser_state, state)
    ):
        # Login CSRF: someone else's sign-in finishing in this browser.
        raise Invalid(
            "This sign-in was not started in this browser; start again.", code="sso_expired"
        )
    flow.status = "used"  # one exchange per code, even if the provider fails below
    session.commit()
    who = identify(
        provider,
        redirect_uri=callback_url(settings, provider),
        code=code,
        code_verifier=flow.code_verifier,
        nonce=flow.nonce,
    )
    return _resolve(session, provider, flow, who)


def _resolve(
    session: Session, provider: SsoProvider, flow: SsoFlow, who: ProviderIdentity
) -> Outcome:
    identity = session.scalars(
        select(SsoIdentity).where(
            SsoIdentity.provider == provider.name, SsoIdentity.subject == who.subject
        )
    ).first()
    if identity is not None:
        user = session.get(User, identity.user_id)
        assert user is not None  # the identity is deleted with its user
        identity.last_login_at = utcnow()
        if who.email:
            identity.email = who.email
        return _finish(session, provider, flow, user, who)
    if not (who.email and who.email_verified):
        raise Invalid(
            f"{provider.label} did not confirm an e-mail address for this account, so no "
            "account can be made or linked. Verify your e-mail there and try again.",
            code="sso_email_unverified",
        )
    existing = session.scalars(select(User).where(User.email == who.email)).first()
    flow.subject = who.subject
    flow.email = who.email
    if existing is not None:
        # Never linked silently: whoever controls the provider account must also prove
        # they own this one (its password, or being signed in to it).
        flow.status = "link"
        flow.user_id = existing.id
        session.commit()
        return Outcome("link", flow=flow)
    # No password: this account signs in through providers only (or links one later).
    user = User(email=who.email, name=_free_name(session, who), password_hash="")
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # the same e-mail or name taken a moment ago
        session.rollback()
        raise Invalid(
            "This sign-in collided with another; start again.", code="sso_expired"
        ) from exc
    _link(session, provider, flow, user)
    return _finish(session, provider, flow, user, who)


def _free_name(session: Session, who: ProviderIdentity) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "-", who.name_hint or who.email.split("@")[0])
    base = base.lstrip("._-")[:56] or "user"
    for n in range(1, 1000):
        candidate = base if n == 1 else f"{base}-{n}"
        if session.scalar(select(User.id).where(User.name == candidate)) is None:
            return candidate
    return f"{base[:40]}-{secrets.token_hex(4)}"


def _link(session: Session, provider: SsoProvider, flow: SsoFlow, user: User) -> None:
    session.add(
        SsoIdentity(
            provider=provider.name,
            subject=flow.subject,
            user_id=user.id,
            email=flow.email,
            last_login_at=utcnow(),
        )
    )


def _finish(
    session: Session, provider: SsoProvider, flow: SsoFlow, user: User, who: ProviderIdentity
) -> Outcome:
    _auto_join(session, provider, user, who)
    if flow.purpose == "cli":
        flow.status = "approve"
        flow.user_id = user.id
        flow.email = user.email  # shown on the approval page
        session.commit()
        return Outcome("approve", flow=flow)
    issued = _issue(session, user, "session", f"sso:{provider.name}", _session_expiry())
    issued.record.sso_provider = provider.name
    next_url = flow.next_url
    session.delete(flow)
    try:
        session.commit()
    except IntegrityError as exc:  # the same first sign-in finishing twice at once
        session.rollback()
        raise Invalid("This sign-in was already used; start again.", code="sso_expired") from exc
    return Outcome("signed_in", issued=issued, next_url=next_url or "/")


def _auto_join(session: Session, provider: SsoProvider, user: User, who: ProviderIdentity) -> None:
    """Join every org whose `sso` settings let this provider's users of this domain in.

    Scans the orgs' settings documents (JSON; one query): fine for the number of orgs
    a server holds; an index on the provider would be the next step.
    """
    mine = set(session.scalars(select(Membership.org_id).where(Membership.user_id == user.id)))
    for org in session.scalars(select(Organization)):
        sso = (org.settings or {}).get("sso") or {}
        if org.id in mine or not may_auto_join(
            org_provider=sso.get("provider"),
            allowed_domains=sso.get("allowed_domains") or [],
            signed_in_via=provider.name,
            email=who.email,
            email_verified=who.email_verified,
        ):
            continue
        session.add(Membership(org_id=org.id, user_id=user.id, role=Role.member.value))
        audit.record(
            session,
            org_id=org.id,
            actor=user,
            action="member.joined_sso",
            target_type="user",
            target_id=user.id,
            after={"role": Role.member.value, "provider": provider.name, "email": who.email},
        )


def confirm_link(
    session: Session,
    settings: Settings,
    flow: SsoFlow,
    *,
    password: str | None = None,
    signed_in_as: User | None = None,
) -> Outcome:
    """Link the provider's identity to the account with its e-mail, proven by that
    account's password or by being signed in to it."""
    provider = provider_or_404(settings, flow.provider)
    user = session.get(User, flow.user_id) if flow.user_id else None
    if user is None:
        raise Invalid("This sign-in has expired; start again.", code="sso_expired")
    if signed_in_as is not None:
        if signed_in_as.id != user.id:
            raise Invalid(
                "You are signed in to another account; sign out first.", code="sso_link_refused"
            )
    elif password is None or not security.verify_password(user.password_hash, password):
        raise Unauthenticated("Wrong password.", code="bad_credentials")
    _link(session, provider, flow, user)
    who = ProviderIdentity(flow.subject, flow.email, True, user.name)
    return _finish(session, provider, flow, user, who)


def approve_cli(session: Session, flow: SsoFlow) -> None:
    flow.status = "done"
    session.commit()


def poll(session: Session, poll_secret: str) -> IssuedToken | None:
    """The CLI's session once its sign-in was approved (once); None while pending."""
    flow = session.scalars(
        select(SsoFlow).where(SsoFlow.poll_hash == security.hash_token(poll_secret))
    ).first()
    if flow is None or flow.expires_at <= utcnow():
        raise NotFound("This sign-in has expired or was already used.", code="sso_expired")
    if flow.status != "done" or flow.user_id is None:
        return None
    user = session.get(User, flow.user_id)
    assert user is not None
    issued = _issue(session, user, "session", f"sso:{flow.provider}:cli", _session_expiry())
    issued.record.sso_provider = flow.provider
    session.delete(flow)
    session.commit()
    return issued


def identities(session: Session, user_id: uuid.UUID) -> list[SsoIdentity]:
    return list(
        session.scalars(
            select(SsoIdentity)
            .where(SsoIdentity.user_id == user_id)
            .order_by(SsoIdentity.created_at)
        )
    )


def inherit(record: ApiToken, creator: ApiToken) -> None:
    """A personal token made from an SSO session counts as that sign-in (sso.required)."""
    record.sso_provider = creator.sso_provider
