"""Two-factor in a real browser (Debian's headless Chromium, as test_web_browser): enrol
on the profile page by reading the secret off the page, sign out, sign in with password
then code, and require two-factor on the organization's settings page. Screenshots of
the profile and the settings' security section go to artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from api.app import create_app
from orgs.config import get_settings
from orgs.db import Database
from orgs.migrate import upgrade
from tests.e2e.test_web_browser import PASSWORD, SHOTS, UNLABELLED_CONTROLS, browser
from tests.integration.test_jobs_support import FakePrefect
from tests.support import serve_in_thread

__all__ = ["browser"]  # the fixture, shared with test_web_browser

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

# A dev dependency; without it the module skips, as test_web_browser's fixture does.
expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    db = Database(f"sqlite:///{tmp_path / 'cshare.db'}")
    upgrade(db.engine)
    settings = get_settings().model_copy(
        update={"notifications_enabled": False, "dispatcher_enabled": False}
    )
    gateway: Any = FakePrefect()
    with serve_in_thread(create_app(settings, db, gateway)) as url:
        yield url.removesuffix("/api/v1")
    db.dispose()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert not page.evaluate(UNLABELLED_CONTROLS), name


def test_enrol_sign_in_with_a_code_and_require_it(browser: Any, base: str) -> None:
    email = f"owner{int(time.time())}@example.test"
    r = httpx.post(
        f"{base}/api/v1/auth/signup",
        json={"email": email, "name": "owner2fa", "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    r = httpx.post(
        f"{base}/api/v1/orgs",
        json={"name": "Acme Research", "slug": "acme"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        context.add_cookies([{"name": "cshare_session", "value": token, "url": base}])
        page = context.new_page()
        page.goto(f"{base}/orgs/acme")
        page.get_by_role("link", name="owner2fa").click()
        expect(page.get_by_role("heading", name="Your profile")).to_be_visible()
        page.get_by_role("button", name="Set up two-factor").click()
        qr = page.get_by_role("img", name="QR code for your authenticator app")
        expect(qr).to_be_visible()
        assert qr.evaluate("img => img.naturalWidth") > 100  # the SVG rendered
        secret = page.locator("#totp-secret").inner_text()
        shot(page, "profile-2fa-setup")
        totp = pyotp.TOTP(secret)
        page.get_by_label("Code from the app").fill(totp.now())
        page.get_by_role("button", name="Turn on two-factor").click()
        codes = page.locator("#recovery-codes pre").inner_text().split()
        assert len(codes) == 10 and all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", c) for c in codes)
        shot(page, "profile-2fa-recovery-codes")

        # Sign out and in again: the password, then the code (the next step's, as the
        # current one was just used).
        page.get_by_role("button", name="Sign out").click()
        page.goto(f"{base}/login")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Two-factor code")).to_be_visible()
        shot(page, "login-2fa-code")
        page.get_by_label("Code").fill(totp.at(time.time() + 30))
        page.get_by_role("button", name="Verify").click()
        expect(page.get_by_role("link", name="owner2fa")).to_be_visible()

        # Require it for the organization.
        page.goto(f"{base}/orgs/acme/settings")
        page.get_by_label("Require two-factor authentication for every member").check()
        page.locator("#security").get_by_role("button", name="Save").click()
        expect(
            page.get_by_label("Require two-factor authentication for every member")
        ).to_be_checked()
        page.locator("#security").scroll_into_view_if_needed()
        shot(page, "settings-security-2fa")
    finally:
        context.close()
