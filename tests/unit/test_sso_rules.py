"""The pure SSO rules (policies/sso.py) and the org's `sso` settings section."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orgs.sso_config import SsoProvider
from orgs.sso_settings import SsoSettings, refuse_lockout
from policies.errors import Invalid
from policies.sso import domain_allowed, may_auto_join, sso_denial


@pytest.mark.parametrize(
    ("required", "provider", "via", "allowed"),
    [
        (False, None, None, True),
        (False, "corp", None, True),  # configured, not required
        (True, "corp", "corp", True),
        (True, "corp", None, False),  # a password session
        (True, "corp", "github", False),  # another provider
    ],
)
def test_sso_denial(required: bool, provider: str | None, via: str | None, allowed: bool) -> None:
    refused = sso_denial(
        required=required, provider=provider, provider_label="Corp ID", signed_in_via=via
    )
    assert (refused is None) is allowed
    if refused:
        assert "Corp ID" in refused and "sso_required" in refused


def test_domains_match_exactly() -> None:
    assert domain_allowed("a@Corp.Test", ["corp.test"])
    assert not domain_allowed("a@eu.corp.test", ["corp.test"])  # list subdomains themselves
    assert not domain_allowed("a@corp.test.evil", ["corp.test"])
    assert not domain_allowed("no-at-sign", ["corp.test"])


def test_auto_join_needs_provider_domain_and_verified_email() -> None:
    base = {
        "org_provider": "corp",
        "allowed_domains": ["corp.test"],
        "signed_in_via": "corp",
        "email": "a@corp.test",
        "email_verified": True,
    }
    assert may_auto_join(**base)  # type: ignore[arg-type]
    for change in (
        {"email_verified": False},
        {"signed_in_via": "github"},
        {"org_provider": None},
        {"email": "a@other.test"},
    ):
        assert not may_auto_join(**{**base, **change})  # type: ignore[arg-type]


def test_settings_section() -> None:
    s = SsoSettings.model_validate({"provider": "corp", "allowed_domains": ["B.test", "a.test"]})
    assert s.allowed_domains == ["a.test", "b.test"]
    for bad in (
        {"required": True},  # without a provider
        {"allowed_domains": ["a.test"]},
        {"provider": "Corp"},
        {"provider": "corp", "allowed_domains": ["*.a.test"]},
        {"provider": "corp", "extra": 1},
    ):
        with pytest.raises(ValidationError):
            SsoSettings.model_validate(bad)


def test_requiring_a_provider_needs_a_session_through_it() -> None:
    off = SsoSettings(provider="corp")
    on = SsoSettings(provider="corp", required=True)
    with pytest.raises(Invalid) as err:
        refuse_lockout(off, on, None)
    assert err.value.field == "sso.required"
    with pytest.raises(Invalid):
        refuse_lockout(off, on, "github")
    refuse_lockout(off, on, "corp")
    refuse_lockout(on, on, None)  # already on: other edits by password admins are fine


def test_provider_config() -> None:
    p = SsoProvider.model_validate(
        {"name": "gh", "kind": "github", "client_id": "x", "client_secret": "s3cr3t"}
    )
    assert p.label == "GitHub" and "s3cr3t" not in repr(p) and "s3cr3t" not in str(p.public())
    with pytest.raises(ValidationError):
        SsoProvider.model_validate(
            {"name": "corp", "kind": "oidc", "client_id": "x", "client_secret": "y"}
        )


def test_providers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from orgs.config import Settings

    monkeypatch.setenv(
        "CSHARE_SSO_PROVIDERS",
        '[{"name": "corp", "kind": "oidc", "client_id": "a", "client_secret": "b",'
        ' "discovery_url": "https://id.example/.well-known/openid-configuration"},'
        ' {"name": "github", "kind": "github", "client_id": "c", "client_secret": "d"}]',
    )
    settings = Settings()
    assert [p.name for p in settings.sso_providers] == ["corp", "github"]
    assert settings.sso_provider("github") is not None and settings.sso_provider("x") is None
    monkeypatch.setenv(
        "CSHARE_SSO_PROVIDERS",
        '[{"name": "gh", "kind": "github", "client_id": "c", "client_secret": "d"},'
        ' {"name": "gh", "kind": "github", "client_id": "e", "client_secret": "f"}]',
    )
    with pytest.raises(ValidationError, match="unique"):
        Settings()


def test_id_token_claims_are_checked() -> None:
    import time

    from orgs.sso_providers import _check_id_token

    now = int(time.time())
    good = {"iss": "https://id.test", "aud": "app", "sub": "u1", "exp": now + 60, "nonce": "n1"}
    _check_id_token(dict(good), issuer="https://id.test", client_id="app", nonce="n1")
    for change in (
        {"iss": "https://evil.test"},
        {"aud": "other-app"},
        {"aud": ["app", "other-app"]},  # several audiences need azp == this client
        {"exp": now - 3600},
        {"nonce": "replayed"},
    ):
        with pytest.raises(Exception):  # noqa: B017 - joserfc's or ours, any refusal
            _check_id_token(
                {**good, **change}, issuer="https://id.test", client_id="app", nonce="n1"
            )
    _check_id_token(
        {**good, "aud": ["app", "x"], "azp": "app"},
        issuer="https://id.test",
        client_id="app",
        nonce="n1",
    )
