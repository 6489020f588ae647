"""Talking to sign-in providers (authlib): the authorization URL with PKCE, state and
nonce; the code exchange; who signed in (a checked ID token, or GitHub's /user and
/user/emails). No database here: orgs.sso keeps the sign-in's state."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from orgs.sso_config import SsoProvider
from policies.errors import Invalid

TIMEOUT_S = 10.0
GITHUB_SCOPES = ["read:user", "user:email"]
_DISCOVERY_TTL_S = 3600.0
_discovery: dict[str, tuple[float, dict[str, Any]]] = {}


@dataclass(frozen=True, slots=True)
class ProviderIdentity:
    """Who signed in, as the provider vouches for it."""

    subject: str
    email: str  # lowercased; "" if the provider gave none
    email_verified: bool
    name_hint: str  # a user-name suggestion for a new account


def provider_error(provider: SsoProvider, what: str) -> Invalid:
    return Invalid(f"Signing in with {provider.label} failed: {what}.", code="sso_failed")


def _scopes(provider: SsoProvider) -> str:
    scopes = provider.scopes
    if provider.kind == "github" and "openid" in scopes:
        scopes = GITHUB_SCOPES  # the OIDC default means "not set" for GitHub
    return " ".join(scopes)


def discovery(provider: SsoProvider) -> dict[str, Any]:
    """The provider's OpenID configuration, cached for an hour per URL."""
    url = provider.discovery_url or ""
    cached = _discovery.get(url)
    if cached and time.monotonic() - cached[0] < _DISCOVERY_TTL_S:
        return cached[1]
    try:
        response = requests.get(url, timeout=TIMEOUT_S)
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise provider_error(provider, f"its discovery document is unavailable ({exc})") from exc
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(doc.get(key), str):
            raise provider_error(provider, f"its discovery document has no {key}")
    _discovery[url] = (time.monotonic(), doc)
    return doc


def _client(provider: SsoProvider, redirect_uri: str) -> OAuth2Session:
    return OAuth2Session(
        provider.client_id,
        provider.client_secret.get_secret_value(),
        scope=_scopes(provider),
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
    )


def _json(response: requests.Response) -> Any:
    response.raise_for_status()
    return response.json()


def authorization_url(
    provider: SsoProvider, *, redirect_uri: str, state: str, code_verifier: str, nonce: str
) -> str:
    if provider.kind == "github":
        endpoint, extra = provider.authorize_url, {}
    else:
        endpoint, extra = discovery(provider)["authorization_endpoint"], {"nonce": nonce}
    with _client(provider, redirect_uri) as client:
        url, _ = client.create_authorization_url(
            endpoint, state=state, code_verifier=code_verifier, **extra
        )
    return str(url)


def identify(
    provider: SsoProvider, *, redirect_uri: str, code: str, code_verifier: str, nonce: str
) -> ProviderIdentity:
    """Exchange the code and say who signed in; Invalid(`sso_failed`) on any doubt."""
    try:
        if provider.kind == "github":
            return _github(provider, redirect_uri, code, code_verifier)
        return _oidc(provider, redirect_uri, code, code_verifier, nonce)
    except (requests.RequestException, AuthlibBaseError, JoseError, ValueError, KeyError) as exc:
        # Never the exception text of a token response (it may echo the request).
        raise provider_error(
            provider, f"the provider's answer was refused ({type(exc).__name__})"
        ) from None


def _oidc(
    provider: SsoProvider, redirect_uri: str, code: str, code_verifier: str, nonce: str
) -> ProviderIdentity:
    meta = discovery(provider)
    with _client(provider, redirect_uri) as client:
        token = client.fetch_token(
            meta["token_endpoint"], code=code, code_verifier=code_verifier, timeout=TIMEOUT_S
        )
        id_token = token.get("id_token")
        if not id_token:
            raise ValueError("no id_token")
        keys = KeySet.import_key_set(_json(client.get(meta["jwks_uri"], timeout=TIMEOUT_S)))
        algorithms = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        decoded = jwt.decode(id_token, keys, algorithms=[a for a in algorithms if a != "none"])
        data: dict[str, Any] = dict(decoded.claims)
        _check_id_token(data, issuer=meta["issuer"], client_id=provider.client_id, nonce=nonce)
        if "email" not in data and isinstance(meta.get("userinfo_endpoint"), str):
            info = _json(client.get(meta["userinfo_endpoint"], timeout=TIMEOUT_S))
            if info.get("sub") == data["sub"]:  # OIDC Core 5.3.2
                data = {**info, **data}
    email = str(data.get("email") or "").strip().lower()
    verified = data.get("email_verified") is True or (provider.trust_email and bool(email))
    hint = str(data.get("preferred_username") or data.get("nickname") or email.split("@")[0])
    return ProviderIdentity(str(data["sub"]), email, verified, hint)


def _check_id_token(data: dict[str, Any], *, issuer: str, client_id: str, nonce: str) -> None:
    """OIDC Core 3.1.3.7: issuer, audience (and azp), expiry, nonce."""
    registry = jwt.JWTClaimsRegistry(
        leeway=60,
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        exp={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    registry.validate(data)
    audience = data.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise ValueError("the ID token is not for this client")
    if len(audiences) > 1 and data.get("azp") != client_id:
        raise ValueError("the ID token's azp is not this client")


def _github(
    provider: SsoProvider, redirect_uri: str, code: str, code_verifier: str
) -> ProviderIdentity:
    with _client(provider, redirect_uri) as client:
        client.fetch_token(
            provider.token_url,
            code=code,
            code_verifier=code_verifier,
            headers={"Accept": "application/json"},
            timeout=TIMEOUT_S,
        )
        api = provider.api_url.rstrip("/")
        headers = {"Accept": "application/vnd.github+json"}
        user = _json(client.get(f"{api}/user", headers=headers, timeout=TIMEOUT_S))
        emails = _json(client.get(f"{api}/user/emails", headers=headers, timeout=TIMEOUT_S))
    # The verified primary address only: GitHub accounts may list addresses they do not
    # own (unverified), which must never link to someone else's account.
    primary = next(
        (e for e in emails if isinstance(e, dict) and e.get("primary") and e.get("verified")),
        None,
    )
    email = str(primary["email"]).strip().lower() if primary else ""
    return ProviderIdentity(str(user["id"]), email, primary is not None, str(user.get("login", "")))
