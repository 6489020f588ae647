"""Pure decisions about sign-in providers: whether a session may enter an organization
that requires its provider, and which organizations an e-mail may join by domain."""

from __future__ import annotations

from collections.abc import Iterable


def sso_denial(
    *, required: bool, provider: str | None, provider_label: str, signed_in_via: str | None
) -> str | None:
    """Why a session may not enter an org with `sso.required` (None: it may).

    Only a session (or a token made from one) that signed in through the org's own
    provider gets in; a password session, or one through another provider, does not.
    """
    if not required or provider is None or signed_in_via == provider:
        return None
    return (
        f"This organization requires signing in with {provider_label}: sign out and "
        f"sign in with {provider_label} (rule: sso_required)."
    )


def email_domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].strip().lower()


def domain_allowed(email: str, allowed_domains: Iterable[str]) -> bool:
    """Exact domain match, case-insensitive; no subdomains unless listed themselves."""
    domain = email_domain(email)
    return bool(domain) and domain in {d.strip().lower() for d in allowed_domains}


def may_auto_join(
    *,
    org_provider: str | None,
    allowed_domains: Iterable[str],
    signed_in_via: str,
    email: str,
    email_verified: bool,
) -> bool:
    """A user signing in through the org's provider with a verified e-mail of one of its
    allowed domains joins it as a member."""
    return (
        email_verified
        and org_provider is not None
        and org_provider == signed_in_via
        and domain_allowed(email, allowed_domains)
    )
