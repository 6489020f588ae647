"""Signing in with OpenID Connect (a real `oidc-provider` on 127.0.0.1) and GitHub (a
local endpoint with GitHub's shapes): web and CLI flows, linking to an existing account,
auto-join by e-mail domain, and `sso.required`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from orgs.config import get_settings
from orgs.db import Database
from orgs.models import ApiToken, Membership, SsoIdentity, User
from orgs.sso_config import SsoProvider
from tests.github_oauth import FakeGitHub, GitHubUser
from tests.oidc_server import OidcServer, sign_in_at_provider
from tests.support import PREFIX, password_for

BASE = "http://testserver"
CALLBACK = f"{BASE}/sso/corp/callback"
ACCOUNTS = {
    "alice": {"email": "alice@corp.test", "email_verified": True},
    "owner": {"email": "owner@corp.test", "email_verified": True},
    "bob": {"email": "bob@corp.test", "email_verified": True},
    "outsider": {"email": "carol@elsewhere.test", "email_verified": True},
    "unverified": {"email": "mallory@corp.test", "email_verified": False},
}


@dataclass
class Sso:
    client: TestClient
    db: Database
    oidc: OidcServer

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response: httpx.Response = self.client.request(method, PREFIX + path, headers=headers, **kw)
        return response

    def browser(self) -> TestClient:
        """A fresh browser (its own cookies) on the same app."""
        return TestClient(self.client.app, base_url=BASE, raise_server_exceptions=False)

    def web_sign_in(self, browser: TestClient, login: str, next_url: str = "") -> httpx.Response:
        """Click "Sign in with Corp ID", sign in at the provider, come back."""
        r = browser.get("/sso/corp/start", params={"next": next_url}, follow_redirects=False)
        assert r.status_code == 303, r.text
        with httpx.Client() as at_provider:
            query = sign_in_at_provider(at_provider, r.headers["location"], login, CALLBACK)
        back: httpx.Response = browser.get(
            "/sso/corp/callback", params=query, follow_redirects=False
        )
        return back

    def signup(self, name: str, email: str) -> str:
        r = self.api(
            "POST",
            "/auth/signup",
            json={"email": email, "name": name, "password": password_for(name)},
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def user(self, email: str) -> User:
        with self.db.session() as s:
            user = s.scalars(select(User).where(User.email == email)).one()
            s.expunge(user)
            return user


@pytest.fixture
def sso_env(database: Database, oidc_factory: Callable[..., OidcServer]) -> Iterator[Sso]:
    oidc = oidc_factory([CALLBACK], ACCOUNTS)
    settings = get_settings().model_copy(
        update={
            "public_url": BASE,
            "sso_providers": [SsoProvider(**oidc.provider_config())],
        }
    )
    with TestClient(
        create_app(settings, database), base_url=BASE, raise_server_exceptions=False
    ) as client:
        yield Sso(client, database, oidc)


def _session_of(browser: TestClient) -> str:
    token = browser.cookies.get("cshare_session")
    assert token, "not signed in"
    return str(token)


def _org_with_sso(env: Sso, owner_token: str, **sso: Any) -> str:
    r = env.api("POST", "/orgs", owner_token, json={"name": "Corp Research"})
    assert r.status_code == 201, r.text
    slug: str = r.json()["slug"]
    r = env.api(
        "PUT", f"/orgs/{slug}/settings", owner_token, json={"sso": {"provider": "corp", **sso}}
    )
    assert r.status_code == 200, r.text
    return slug


def test_providers_listed_without_secrets(sso_env: Sso) -> None:
    r = sso_env.api("GET", "/auth/sso/providers")
    assert r.json() == [{"name": "corp", "display_name": "Corp ID", "kind": "oidc"}]
    assert sso_env.oidc.client_secret not in sso_env.client.get("/login").text
    assert "Sign in with Corp ID" in sso_env.client.get("/login").text


def test_first_sign_in_creates_account_and_auto_joins_by_domain(sso_env: Sso) -> None:
    owner = sso_env.signup("boss", "boss@corp.test")
    slug = _org_with_sso(sso_env, owner, allowed_domains=["Corp.test"])
    browser = sso_env.browser()
    r = sso_env.web_sign_in(browser, "alice", next_url="/welcome")
    assert r.status_code == 303 and r.headers["location"] == "/welcome", r.text
    token = _session_of(browser)
    me = sso_env.api("GET", "/me", token).json()
    assert me["email"] == "alice@corp.test" and me["name"] == "alice"
    # Joined the org whose provider and domain match, as a member.
    r = sso_env.api("GET", f"/orgs/{slug}", token)
    assert r.status_code == 200, r.text
    with sso_env.db.session() as s:
        user = s.scalars(select(User).where(User.email == "alice@corp.test")).one()
        assert s.scalars(select(Membership.role).where(Membership.user_id == user.id)).all() == [
            "member"
        ]
        ident = s.scalars(select(SsoIdentity).where(SsoIdentity.user_id == user.id)).one()
        assert (ident.provider, ident.subject) == ("corp", "alice")
        kinds = s.scalars(select(ApiToken.sso_provider).where(ApiToken.user_id == user.id)).all()
        assert kinds == ["corp"]
    # Another domain signs in (new account) but joins nothing.
    other = sso_env.browser()
    assert sso_env.web_sign_in(other, "outsider").status_code == 303
    assert sso_env.api("GET", f"/orgs/{slug}", _session_of(other)).status_code == 404


def test_callback_from_another_browser_is_refused(sso_env: Sso) -> None:
    starter, victim = sso_env.browser(), sso_env.browser()
    r = starter.get("/sso/corp/start", follow_redirects=False)
    with httpx.Client() as at_provider:
        query = sign_in_at_provider(at_provider, r.headers["location"], "alice", CALLBACK)
    r = victim.get("/sso/corp/callback", params=query, follow_redirects=False)
    assert r.status_code == 422
    assert "not started in this browser" in r.text
    assert "cshare_session" not in victim.cookies
    # The browser that started it still finishes it, once.
    r = starter.get("/sso/corp/callback", params=query, follow_redirects=False)
    assert r.status_code == 303 and "cshare_session" in starter.cookies
    r = starter.get("/sso/corp/callback", params=query, follow_redirects=False)
    assert r.status_code == 422 and "expired or was already used" in r.text


def test_unverified_email_makes_no_account(sso_env: Sso) -> None:
    browser = sso_env.browser()
    r = sso_env.web_sign_in(browser, "unverified")
    assert r.status_code == 422
    assert "did not confirm an e-mail" in r.text
    with sso_env.db.session() as s:
        assert s.scalars(select(User).where(User.email == "mallory@corp.test")).first() is None


def test_existing_account_is_linked_only_with_its_password(sso_env: Sso) -> None:
    sso_env.signup("bob", "bob@corp.test")
    browser = sso_env.browser()
    r = sso_env.web_sign_in(browser, "bob")
    assert r.status_code == 303 and r.headers["location"] == "/sso/link"
    assert "cshare_session" not in browser.cookies  # not signed in yet
    page = browser.get("/sso/link")
    assert page.status_code == 200 and "bob@corp.test" in page.text
    csrf = browser.cookies["cshare_csrf"]
    r = browser.post("/sso/link", data={"password": "wrong-password", "csrf_token": csrf})
    assert r.status_code == 401 and "Wrong password" in r.text
    r = browser.post(
        "/sso/link",
        data={"password": password_for("bob"), "csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert sso_env.api("GET", "/me", _session_of(browser)).json()["name"] == "bob"
    linked = sso_env.api("GET", "/me/identities", _session_of(browser)).json()
    assert [(i["provider"], i["subject"], i["email"]) for i in linked] == [
        ("corp", "bob", "bob@corp.test")
    ]
    # From now on the provider signs bob in directly.
    again = sso_env.browser()
    r = sso_env.web_sign_in(again, "bob")
    assert r.status_code == 303 and r.headers["location"] == "/"
    with sso_env.db.session() as s:
        assert len(s.scalars(select(User).where(User.email == "bob@corp.test")).all()) == 1


def test_existing_account_linked_while_signed_in(sso_env: Sso) -> None:
    sso_env.signup("bob", "bob@corp.test")
    browser = sso_env.browser()
    r = browser.post(
        "/login",
        data={
            "email": "bob@corp.test",
            "password": password_for("bob"),
            "csrf_token": browser.get("/login") and browser.cookies["cshare_csrf"],
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    password_session = _session_of(browser)
    r = sso_env.web_sign_in(browser, "bob")
    assert r.headers["location"] == "/sso/link"
    page = browser.get("/sso/link")
    assert "You are signed in to it" in page.text
    from api.web.csrf import token_for_session

    r = browser.post(
        "/sso/link",
        data={"csrf_token": token_for_session(password_session)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert _session_of(browser) != password_session
    with sso_env.db.session() as s:
        assert s.scalars(select(SsoIdentity.subject)).all() == ["bob"]


def test_cli_sign_in_by_polling(sso_env: Sso) -> None:
    r = sso_env.api("POST", "/auth/sso/corp/start")
    assert r.status_code == 201, r.text
    started = r.json()
    poll = {"poll_token": started["poll_token"]}
    assert sso_env.api("POST", "/auth/sso/poll", json=poll).status_code == 202
    browser = sso_env.browser()  # the browser never saw the start: no flow cookie
    with httpx.Client() as at_provider:
        query = sign_in_at_provider(at_provider, started["url"], "alice", CALLBACK)
    r = browser.get("/sso/corp/callback", params=query, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/sso/approve"
    page = browser.get("/sso/approve")
    assert started["user_code"] in page.text and "alice@corp.test" in page.text
    # Not approved yet: still pending.
    assert sso_env.api("POST", "/auth/sso/poll", json=poll).status_code == 202
    r = browser.post("/sso/approve", data={"csrf_token": browser.cookies["cshare_csrf"]})
    assert r.status_code == 200 and "command line is signed in" in r.text
    r = sso_env.api("POST", "/auth/sso/poll", json=poll)
    assert r.status_code == 200 and r.json()["status"] == "done"
    token = r.json()["token"]
    assert sso_env.api("GET", "/me", token).json()["email"] == "alice@corp.test"
    assert "cshare_session" not in browser.cookies  # the browser got no session
    # Once only.
    assert sso_env.api("POST", "/auth/sso/poll", json=poll).status_code == 404


def test_sso_required_blocks_password_sessions(sso_env: Sso) -> None:
    owner_browser = sso_env.browser()
    assert sso_env.web_sign_in(owner_browser, "owner").status_code == 303
    owner_sso = _session_of(owner_browser)
    slug = _org_with_sso(sso_env, owner_sso, allowed_domains=["corp.test"])
    # A password member (invited, other domain).
    member = sso_env.signup("pat", "pat@elsewhere.test")
    r = sso_env.api("POST", f"/orgs/{slug}/invitations", owner_sso, json={"role": "admin"})
    assert sso_env.api("POST", f"/invitations/{r.json()['code']}/accept", member).is_success
    # A password session may not turn it on (it would lock itself out).
    r = sso_env.api("PUT", f"/orgs/{slug}/settings", member, json={"sso": {"required": True}})
    assert r.status_code == 422 and r.json()["field"] == "sso.required", r.text
    r = sso_env.api("PUT", f"/orgs/{slug}/settings", owner_sso, json={"sso": {"required": True}})
    assert r.status_code == 200, r.text
    assert r.json()["sso"] == {
        "provider": "corp",
        "allowed_domains": ["corp.test"],
        "required": True,
    }
    # The password session: 403 naming the provider, on the API and the console.
    r = sso_env.api("GET", f"/orgs/{slug}/members", member)
    assert r.status_code == 403 and r.json()["error"] == "sso_required", r.text
    assert "corp" in r.json()["detail"]
    page = sso_env.browser()
    page.cookies.set("cshare_session", member)
    assert page.get(f"/orgs/{slug}").status_code == 403
    # Still 404 for non-members (the org's existence is not revealed).
    stranger = sso_env.signup("zed", "zed@elsewhere.test")
    assert sso_env.api("GET", f"/orgs/{slug}", stranger).status_code == 404
    # The SSO session works; a personal token made from it does, one from a password
    # session does not.
    assert sso_env.api("GET", f"/orgs/{slug}/members", owner_sso).status_code == 200
    r = sso_env.api("POST", "/me/tokens", owner_sso, json={"name": "ci"})
    assert sso_env.api("GET", f"/orgs/{slug}", r.json()["token"]).status_code == 200
    r = sso_env.api("POST", "/me/tokens", member, json={"name": "ci"})
    assert sso_env.api("GET", f"/orgs/{slug}", r.json()["token"]).status_code == 403
    # Unaffected elsewhere: the member's own org still works with the password session.
    r = sso_env.api("POST", "/orgs", member, json={"name": "Pat Lab"})
    assert sso_env.api("GET", f"/orgs/{r.json()['slug']}", member).status_code == 200


def test_sso_settings_are_validated(sso_env: Sso) -> None:
    owner = sso_env.signup("boss", "boss@corp.test")
    r = sso_env.api("POST", "/orgs", owner, json={"name": "Corp"})
    slug = r.json()["slug"]
    for bad, field in (
        ({"allowed_domains": ["corp.test"]}, "sso"),
        ({"provider": "Bad Name"}, "sso.provider"),
        ({"provider": "corp", "allowed_domains": ["not a domain"]}, "sso.allowed_domains"),
        ({"provider": "corp", "required": "yes"}, "sso.required"),
    ):
        r = sso_env.api("PUT", f"/orgs/{slug}/settings", owner, json={"sso": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["field"] == field, (bad, r.text)


# ------------------------------------------------------------------ GitHub


@pytest.fixture
def github_env(sqlite_database: Database, fake_github: FakeGitHub) -> Iterator[Sso]:
    settings = get_settings().model_copy(
        update={
            "public_url": BASE,
            "sso_providers": [SsoProvider(**fake_github.provider_config())],
        }
    )
    with TestClient(
        create_app(settings, sqlite_database), base_url=BASE, raise_server_exceptions=False
    ) as client:
        yield Sso(client, sqlite_database, oidc=None)  # type: ignore[arg-type]


def _github_sign_in(env: Sso) -> tuple[TestClient, httpx.Response]:
    browser = env.browser()
    r = browser.get("/sso/github/start", follow_redirects=False)
    assert r.status_code == 303
    assert "code_challenge=" in r.headers["location"]
    with httpx.Client() as gh:
        back = gh.get(r.headers["location"])
    assert back.status_code == 302
    target = back.headers["location"].removeprefix(BASE)
    return browser, browser.get(target, follow_redirects=False)


def test_github_sign_in_uses_the_verified_primary_email(
    github_env: Sso,
    fake_github: FakeGitHub,
) -> None:
    fake_github.user = GitHubUser(
        id=4242,
        login="octo-cat",
        emails=[
            {"email": "someone@else.test", "primary": False, "verified": False},
            {"email": "Octo@Corp.test", "primary": True, "verified": True},
        ],
    )
    browser, r = _github_sign_in(github_env)
    assert r.status_code == 303, r.text
    me = github_env.api("GET", "/me", _session_of(browser)).json()
    assert (me["email"], me["name"]) == ("octo@corp.test", "octo-cat")
    with github_env.db.session() as s:
        ident = s.scalars(select(SsoIdentity)).one()
        assert (ident.provider, ident.subject) == ("github", "4242")


def test_github_without_verified_primary_email_is_refused(
    github_env: Sso,
    fake_github: FakeGitHub,
) -> None:
    fake_github.user = GitHubUser(
        id=7, login="nover", emails=[{"email": "x@corp.test", "primary": True, "verified": False}]
    )
    browser, r = _github_sign_in(github_env)
    assert r.status_code == 422 and "did not confirm an e-mail" in r.text
    assert "cshare_session" not in browser.cookies


def test_provider_refusals_are_shown_not_crashed(sso_env: Sso) -> None:
    # The person cancelled at the provider.
    browser = sso_env.browser()
    r = browser.get("/sso/corp/start", follow_redirects=False)
    r = browser.get(
        "/sso/corp/callback",
        params={"error": "access_denied", "error_description": "<b>User cancelled</b>"},
    )
    assert r.status_code == 422
    assert "&lt;b&gt;User cancelled&lt;/b&gt;" in r.text and "<b>User" not in r.text
    # A wrong client secret: the token endpoint refuses, the secret is nowhere in the page.
    settings: Any = sso_env.client.app.state.settings  # type: ignore[attr-defined]
    settings.sso_providers = [
        SsoProvider(**sso_env.oidc.provider_config(client_secret="not-the-secret"))
    ]
    r = sso_env.web_sign_in(sso_env.browser(), "alice")
    assert r.status_code == 422
    assert "Signing in with Corp ID failed" in r.text and "not-the-secret" not in r.text
    # An unknown provider.
    r = sso_env.browser().get("/sso/nope/start")
    assert r.status_code == 404
    assert sso_env.api("POST", "/auth/sso/nope/start").json()["error"] == "sso_provider_unknown"


def test_console_sso_panel(sso_env: Sso) -> None:
    from api.web.csrf import token_for_session

    browser = sso_env.browser()
    assert sso_env.web_sign_in(browser, "owner").status_code == 303
    token = _session_of(browser)
    r = sso_env.api("POST", "/orgs", token, json={"name": "Panel Org"})
    slug = r.json()["slug"]
    page = browser.get(f"/orgs/{slug}/settings")
    assert page.status_code == 200 and "Single sign-on" in page.text and "Corp ID" in page.text
    csrf = token_for_session(token)
    url = f"/orgs/{slug}/settings/sso"
    r = browser.post(
        url,
        data={"provider": "corp", "allowed_domains": "not a domain", "csrf_token": csrf},
    )
    assert r.status_code == 422 and "is not a domain" in r.text
    r = browser.post(
        url,
        data={
            "provider": "corp",
            "allowed_domains": "corp.test\nlabs.corp.test",
            "required": "yes",
            "csrf_token": csrf,
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    got = sso_env.api("GET", f"/orgs/{slug}/settings", token).json()["sso"]
    assert got == {
        "provider": "corp",
        "allowed_domains": ["corp.test", "labs.corp.test"],
        "required": True,
    }
    # A provider this server does not have is refused (API and console alike).
    r = sso_env.api("PUT", f"/orgs/{slug}/settings", token, json={"sso": {"provider": "okta"}})
    assert r.status_code == 422 and r.json()["field"] == "sso.provider", r.text
    r = browser.post(url, data={"provider": "okta", "csrf_token": csrf})
    assert r.status_code == 422 and "No sign-in provider" in r.text
