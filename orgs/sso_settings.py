"""An organization's `sso` settings: its sign-in provider, the e-mail domains whose
users join by signing in through it, and whether its members must sign in through it."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orgs.sso_config import PROVIDER_NAME_RE
from policies.errors import Invalid

DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class SsoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # The operator-configured provider's name (`cshare login --sso NAME`); None: none.
    provider: str | None = None
    # Users signing in through `provider` with a verified e-mail of these domains join
    # as members (exact domains; list subdomains themselves).
    allowed_domains: list[str] = Field(default_factory=list, max_length=50)
    # Org access only from sessions that signed in through `provider` (403 otherwise).
    required: bool = False

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str | None) -> str | None:
        if value is not None and not PROVIDER_NAME_RE.fullmatch(value):
            raise ValueError("a provider name: 1-32 lowercase letters, digits or '-'")
        return value

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        out = []
        for domain in value:
            d = domain.strip().lower()
            if not DOMAIN_RE.fullmatch(d):
                raise ValueError(f"'{domain}' is not a domain like example.com")
            out.append(d)
        return sorted(set(out))

    @model_validator(mode="after")
    def _needs_provider(self) -> SsoSettings:
        if self.provider is None and (self.required or self.allowed_domains):
            raise ValueError("sso.required and sso.allowed_domains need sso.provider")
        return self


def refuse_lockout(before: SsoSettings, after: SsoSettings, signed_in_via: str | None) -> None:
    """Requiring a provider takes effect at once: only from a session signed in through
    it, so the admin turning it on has shown it works and keeps access."""
    turning_on = after.required and (not before.required or before.provider != after.provider)
    if turning_on and signed_in_via != after.provider:
        raise Invalid(
            f"Sign in with '{after.provider}' before requiring it, so you do not lock "
            "yourself (and everyone else) out.",
            field="sso.required",
        )
