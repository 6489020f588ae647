"""Operator configuration of sign-in providers (`CSHARE_SSO_PROVIDERS`, docs/sso.md).

Two kinds: any OpenID Connect provider found by its discovery URL (Microsoft Entra ID,
Google, Okta, Keycloak...) and GitHub's OAuth apps (github.com or GitHub Enterprise
Server, whose URLs are settable). Client secrets are `SecretStr`: never logged, never
returned by an API.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

PROVIDER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class SsoProvider(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Short name used in URLs, org settings (`sso.provider`) and `cshare login --sso`.
    name: str
    kind: Literal["oidc", "github"]
    display_name: str = ""
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    # OIDC: the issuer's `/.well-known/openid-configuration`.
    discovery_url: str | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    # OIDC: treat the `email` claim as verified without `email_verified: true`. Only for
    # providers that never send that claim yet own every address they issue (a single
    # Entra ID tenant with verified domains); see docs/sso.md.
    trust_email: bool = False
    # GitHub: github.com by default; GitHub Enterprise Server (and the tests) set these.
    authorize_url: str = "https://github.com/login/oauth/authorize"
    token_url: str = "https://github.com/login/oauth/access_token"  # noqa: S105 (a URL)
    api_url: str = "https://api.github.com"

    @model_validator(mode="after")
    def _check(self) -> SsoProvider:
        if not PROVIDER_NAME_RE.fullmatch(self.name):
            raise ValueError(f"provider name {self.name!r}: 1-32 lowercase letters, digits or '-'")
        if self.kind == "oidc" and not self.discovery_url:
            raise ValueError(f"provider {self.name!r}: an OIDC provider needs discovery_url")
        if self.kind == "oidc" and "openid" not in self.scopes:
            raise ValueError(f"provider {self.name!r}: OIDC scopes must include 'openid'")
        return self

    @property
    def label(self) -> str:
        return self.display_name or ("GitHub" if self.kind == "github" else self.name)

    def public(self) -> dict[str, str]:
        """What anyone may see: name, label and kind (never the client secret)."""
        return {"name": self.name, "display_name": self.label, "kind": self.kind}


def parse_providers(providers: list[SsoProvider]) -> list[SsoProvider]:
    names = [p.name for p in providers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"sso provider names must be unique: {', '.join(duplicates)}")
    return providers
