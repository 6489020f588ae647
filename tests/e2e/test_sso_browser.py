"""Signing in with OpenID Connect in a real browser: Debian's headless Chromium clicks
"Sign in with Corp ID" on the login page, signs in at a real `oidc-provider` (its
development login and consent pages), and lands in the console signed in, a member of
the organization whose `sso.allowed_domains` has the account's domain.

Chromium and node come from the system (see test_web_browser.py and tests/oidc_server.py):
missing, the module skips, except under CI=true.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from orgs.config import get_settings
from orgs.db import Database
from orgs.migrate import upgrade
from orgs.sso_config import SsoProvider
from tests.e2e.test_web_browser import CHROMIUM, CHROMIUM_ARGS, IN_CI, SHOTS
from tests.integration.test_jobs_support import FakePrefect
from tests.oidc_server import OidcServer
from tests.support import serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - playwright is a dev dependency
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture
def chromium() -> Iterator[Any]:
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM or not Path(CHROMIUM).exists():
        message = "Chromium is not installed: `apt-get install -y chromium`"
        if IN_CI:
            pytest.fail(message + " (CI=true requires it)")
        pytest.skip(message)
    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_sign_in_with_oidc_in_the_browser(
    chromium: Any,
    oidc_factory: Callable[..., OidcServer],
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cshare.db'}")
    upgrade(db.engine)
    settings = get_settings().model_copy(
        update={"notifications_enabled": False, "dispatcher_enabled": False}
    )
    gateway: Any = FakePrefect()
    with serve_in_thread(create_app(settings, db, gateway)) as url:
        base = url.removesuffix("/api/v1")
        oidc = oidc_factory(
            [f"{base}/sso/corp/callback"],
            {"dana": {"email": "dana@corp.test", "email_verified": True, "name": "Dana"}},
        )
        # Known only now (the port): what an operator sets before starting the server.
        settings.public_url = base
        settings.sso_providers = [SsoProvider(**oidc.provider_config())]
        # An org that lets corp.test users of this provider in.
        r = httpx.post(
            f"{url}/auth/signup",
            json={"email": "boss@corp.test", "name": "boss", "password": "correct-horse-1"},
        )
        owner = {"Authorization": f"Bearer {r.json()['token']}"}
        slug = httpx.post(f"{url}/orgs", headers=owner, json={"name": "Corp Lab"}).json()["slug"]
        r = httpx.put(
            f"{url}/orgs/{slug}/settings",
            headers=owner,
            json={"sso": {"provider": "corp", "allowed_domains": ["corp.test"]}},
        )
        assert r.status_code == 200, r.text

        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.goto(f"{base}/login")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "sso-login.png"), full_page=True)
            page.get_by_role("link", name="Sign in with Corp ID").click()
            # The provider's own pages (oidc-provider's development interactions).
            page.wait_for_url(f"{oidc.issuer}/**")
            page.fill("input[name=login]", "dana")
            page.fill("input[name=password]", "anything")
            page.locator("button[type=submit]").first.click()
            page.wait_for_selector("text=Authorize")
            page.locator("button[type=submit]").first.click()
            # Back in the console, signed in, inside the org joined by domain.
            page.wait_for_url(f"{base}/orgs/{slug}**")
            expect(page.locator("body")).to_contain_text("Corp Lab")
            page.screenshot(path=str(SHOTS / "sso-signed-in.png"), full_page=True)
            session = next(c for c in context.cookies() if c["name"] == "cshare_session")
            me = httpx.get(
                f"{url}/me", headers={"Authorization": f"Bearer {session['value']}"}
            ).json()
            assert (me["email"], me["name"]) == ("dana@corp.test", "dana")
            # The owner's settings page: the organization's "Single sign-on" panel.
            admin = chromium.new_context(viewport={"width": 1280, "height": 900})
            try:
                owner_page = admin.new_page()
                owner_page.goto(f"{base}/login")
                owner_page.fill("#email", "boss@corp.test")
                owner_page.fill("#password", "correct-horse-1")
                owner_page.get_by_role("button", name="Sign in", exact=True).click()
                owner_page.wait_for_url(f"{base}/orgs/{slug}**")
                owner_page.goto(f"{base}/orgs/{slug}/settings#sso")
                panel = owner_page.locator("#sso")
                expect(panel.locator("#s-sso-provider")).to_have_value("corp")
                expect(panel.locator("#s-sso-domains")).to_have_value("corp.test")
                panel.screenshot(path=str(SHOTS / "sso-org-settings.png"))
            finally:
                admin.close()
        finally:
            context.close()
    db.dispose()
