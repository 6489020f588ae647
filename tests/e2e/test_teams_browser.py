"""Teams, project visibility and the org settings in a real browser (Debian's headless
Chromium, as test_two_factor_browser): the owner turns two-factor on, creates a team on
the Teams page and adds a member, a member sees only their team, and the owner turns
personal projects off on the Settings page.

Screenshots go to artifacts/screenshots/ (as the other browser tests') and, when
CSHARE_SCREENSHOTS names a directory, also there as profile-2fa.png, teams.png and
org-settings.png (the PR notes' pictures).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from tests.e2e.test_two_factor_browser import base, shot
from tests.e2e.test_web_browser import PASSWORD, SHOTS, browser

__all__ = ["base", "browser"]  # fixtures shared with the other browser tests

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

expect = pytest.importorskip("playwright.sync_api").expect


def keep(page: Any, name: str) -> None:
    """The screenshot, plus a copy under $CSHARE_SCREENSHOTS when it is set."""
    shot(page, name)
    target = os.environ.get("CSHARE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHOTS / f"{name}.png", Path(target) / f"{name}.png")


def _signup(base: str, name: str) -> str:
    r = httpx.post(
        f"{base}/api/v1/auth/signup",
        json={"email": f"{name}@example.test", "name": name, "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def test_teams_page_visibility_and_settings(browser: Any, base: str) -> None:
    stamp = int(time.time())
    owner = _signup(base, f"owner{stamp}")
    auth = {"Authorization": f"Bearer {owner}"}
    r = httpx.post(
        f"{base}/api/v1/orgs", json={"name": "Acme Research", "slug": "acme"}, headers=auth
    )
    assert r.status_code == 201, r.text
    people = {}
    for name in (f"ada{stamp}", f"grace{stamp}"):
        token = _signup(base, name)
        code = httpx.post(
            f"{base}/api/v1/orgs/acme/invitations", json={"role": "member"}, headers=auth
        ).json()["code"]
        r = httpx.post(
            f"{base}/api/v1/invitations/{code}/accept",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code in (200, 201), r.text
        people[name] = token
    ada, grace = list(people)
    httpx.post(f"{base}/api/v1/orgs/acme/teams", json={"name": "nlp"}, headers=auth)
    httpx.post(f"{base}/api/v1/orgs/acme/teams/nlp/members", json={"user": grace}, headers=auth)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        context.add_cookies([{"name": "cshare_session", "value": owner, "url": base}])
        page = context.new_page()
        # Two-factor on, from the profile page.
        page.goto(f"{base}/orgs/acme")
        page.get_by_role("link", name=f"owner{stamp}").click()
        page.get_by_role("button", name="Set up two-factor").click()
        secret = page.locator("#totp-secret").inner_text()
        page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
        page.get_by_role("button", name="Turn on two-factor").click()
        expect(page.locator("#recovery-codes")).to_be_visible()
        # The profile as it stays (not the form's answer, which shows the codes once).
        page.goto(f"{base}/orgs/acme")
        page.get_by_role("link", name=f"owner{stamp}").click()
        expect(page.get_by_text("Recovery codes left: 10")).to_be_visible()
        keep(page, "profile-2fa")

        # A team made in the console, with a member added from the org's members.
        page.goto(f"{base}/orgs/acme")
        page.get_by_role("link", name="Teams").click()
        expect(page.get_by_role("heading", name="Teams", exact=True)).to_be_visible()
        page.get_by_label("Name").fill("vision")
        page.get_by_label("Description").fill("Computer vision group")
        page.get_by_role("button", name="Create team").click()
        expect(page.get_by_text("Team created.")).to_be_visible()
        page.get_by_label("Add a member to vision").fill(ada)
        page.locator("form[action$='/teams/vision/members']").get_by_role("button").click()
        expect(page.get_by_text("Added to the team.")).to_be_visible()
        keep(page, "teams")

        # Personal projects off, on the Settings page.
        page.goto(f"{base}/orgs/acme/settings")
        box = page.get_by_label("Members may create personal projects", exact=False)
        expect(box).to_be_checked()
        box.uncheck()
        page.locator("#projects").get_by_role("button", name="Save").click()
        expect(
            page.get_by_label("Members may create personal projects", exact=False)
        ).not_to_be_checked()
        page.locator("#security").scroll_into_view_if_needed()
        keep(page, "org-settings")
    finally:
        context.close()

    # A member sees only the team they are in, and may not manage teams.
    member = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        member.add_cookies([{"name": "cshare_session", "value": people[ada], "url": base}])
        page = member.new_page()
        page.goto(f"{base}/orgs/acme/teams")
        expect(page.get_by_role("heading", name="Your teams")).to_be_visible()
        expect(page.get_by_text("vision", exact=True)).to_be_visible()
        expect(page.get_by_text("nlp", exact=True)).to_have_count(0)
        expect(page.get_by_role("button", name="Create team")).to_have_count(0)
    finally:
        member.close()
    r = httpx.get(f"{base}/api/v1/orgs/acme/settings", headers=auth)
    assert r.json()["projects"] == {"allow_personal": False}
