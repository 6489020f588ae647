"""The org profile and rejoining in a real browser (Debian's headless Chromium, as in
test_web_browser.py): an admin uploads a logo and sets the contact e-mail on the
settings page, a former member asks to rejoin from the 404 of the org they left, the
admin approves on the members page, and the member sees the logo and their own usage.

Screenshots at 1280 px in artifacts/screenshots/ (profile-*.png); every form control
must have a label.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from orgs.config import get_settings
from orgs.db import Database
from orgs.migrate import upgrade
from tests.e2e.test_web_browser import DESKTOP, SHOTS, UNLABELLED_CONTROLS, browser
from tests.support import ApiClient, Person, serve_in_thread

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the shared `browser` fixture skips without it
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    unlabelled = page.evaluate(UNLABELLED_CONTROLS)
    assert not unlabelled, f"{name}: controls without a label: {unlabelled}"


def as_person(browser: Any, base: str, person: Person) -> Any:
    """A browser context signed in with the person's session token (the cookie)."""
    context = browser.new_context(viewport=DESKTOP)
    context.add_cookies([{"name": "cshare_session", "value": person.token, "url": base}])
    return context


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, ApiClient]]:
    db = Database(f"sqlite:///{tmp_path / 'cshare.db'}")
    upgrade(db.engine)
    settings = get_settings().model_copy(
        update={"notifications_enabled": False, "dispatcher_enabled": False}
    )
    app = create_app(settings, db)
    # The browser talks to the served app; the test sets up people through the same app
    # in-process (no Prefect, no background loops: nothing runs twice that matters).
    with serve_in_thread(app) as url, TestClient(app, raise_server_exceptions=False) as client:
        yield url.removesuffix("/api/v1"), ApiClient(client, db)
    db.dispose()


def test_logo_contact_rejoin_and_own_usage(
    browser: Any, site: tuple[str, ApiClient], tmp_path: Path
) -> None:
    base, api = site
    owner, ada = api.signup("olivia"), api.signup("ada")
    slug = api.create_org(owner, name=f"Acme Research {uuid.uuid4().hex[:4]}")
    api.add_member(slug, owner, ada)
    assert api.post(f"/orgs/{slug}/leave", ada).status_code == 204

    logo = tmp_path / "logo.png"
    img = Image.new("RGB", (96, 96), (255, 255, 255))
    for x in range(20, 76):
        for y in range(20, 76):
            img.putpixel((x, y), (30, 90, 200))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    logo.write_bytes(buffer.getvalue())

    admin = as_person(browser, base, owner).new_page()
    admin.goto(f"{base}/orgs/{slug}/settings")
    admin.get_by_label("Contact e-mail").fill("it@acme.example")
    admin.locator("#general").get_by_role("button", name="Save").click()
    expect(admin.get_by_role("status")).to_contain_text("Settings saved")
    admin.get_by_label("Image").set_input_files(str(logo))
    admin.get_by_role("button", name="Upload logo").click()
    expect(admin.get_by_role("status")).to_contain_text("Logo saved")
    expect(admin.locator(".sidebar img.org-logo")).to_be_visible()
    shot(admin, "profile-01-settings-logo-contact")

    former = as_person(browser, base, ada).new_page()
    former.goto(f"{base}/orgs/{slug}")
    former.get_by_role("link", name="Ask its admins to let you rejoin").click()
    expect(former).to_have_url(re.compile(r"/rejoin\?org="))
    former.get_by_label("Note for its admins").fill("Back from parental leave.")
    former.get_by_role("button", name="Request to rejoin").click()
    expect(former.get_by_role("status")).to_contain_text("Request received")
    expect(former.get_by_text("waiting for an admin")).to_be_visible()
    shot(former, "profile-02-rejoin-request")

    admin.goto(f"{base}/orgs/{slug}/members")
    expect(admin.get_by_role("heading", name="Requests to rejoin")).to_be_visible()
    shot(admin, "profile-03-members-requests")
    admin.get_by_role("button", name="Approve ada").click()
    expect(admin.get_by_role("status")).to_contain_text("Request approved")

    former.goto(f"{base}/orgs/{slug}")
    expect(former.get_by_role("heading", name="Your usage, last 30 days")).to_be_visible()
    expect(former.locator(".sidebar")).to_contain_text("it@acme.example")
    shot(former, "profile-04-dashboard-own-usage")
