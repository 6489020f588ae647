"""The console's everyday pages in a real browser (Debian's headless Chromium, as in
test_web_browser.py): submitting a job through the form generated from the flow's
parameter schema (Explain first, then Submit, from the keyboard), and the personal
API tokens page.

Screenshots at 1280 px in artifacts/screenshots/ (console-*.png); every form control
must have a label. With CSHARE_SCREENSHOTS=DIR the submit form (with an Explain
result) is also saved as DIR/submit-form.png.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from orgs.config import get_settings
from orgs.db import Database
from orgs.migrate import upgrade
from tests.e2e.test_web_browser import browser
from tests.e2e.test_web_profile_browser import as_person, shot
from tests.integration.test_jobs_support import FakePrefect
from tests.integration.test_two_factor import bearer
from tests.integration.test_web_submit import SCHEMA
from tests.support import ApiClient, serve_in_thread

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the shared `browser` fixture skips without it
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, ApiClient]]:
    db = Database(f"sqlite:///{tmp_path / 'cshare.db'}")
    upgrade(db.engine)
    settings = get_settings().model_copy(
        update={"notifications_enabled": False, "dispatcher_enabled": False}
    )
    # The job tests' PrefectGateway stand-in: a submitted job gets its run at once.
    app = create_app(settings, db, FakePrefect())  # type: ignore[arg-type]
    with serve_in_thread(app) as url, TestClient(app, raise_server_exceptions=False) as client:
        yield url.removesuffix("/api/v1"), ApiClient(client, db)
    db.dispose()


def test_submit_a_job_from_the_generated_form(browser: Any, site: tuple[str, ApiClient]) -> None:
    base, api = site
    owner, ada = api.signup("olivia"), api.signup("ada")
    slug = api.create_org(owner, name=f"Acme Research {uuid.uuid4().hex[:4]}")
    api.add_member(slug, owner, ada)
    r = api.post(
        f"/orgs/{slug}/deployments",
        owner,
        json={
            "name": "train",
            "entrypoint": "flows/library/train.py:train",
            "machine_type": "cpu",
            "description": "Trains the baseline model.",
            "parameters": {"name": "nightly"},
            "parameter_schema": SCHEMA,
        },
    )
    assert r.status_code == 201, r.text

    page = as_person(browser, base, ada).new_page()
    page.goto(f"{base}/orgs/{slug}/jobs")
    page.get_by_role("link", name="Submit a job").click()
    expect(page.get_by_role("heading", name="Submit a job")).to_be_visible()
    page.get_by_label("Deployment", exact=True).select_option("train")
    page.get_by_role("button", name="Open form").click()
    expect(page.get_by_role("heading", name="train")).to_be_visible()
    expect(page.get_by_label("Run name")).to_have_value("nightly")  # the deployment's default
    expect(page.get_by_label("Learning rate")).to_have_value("0.01")  # the flow's default

    # A wrong value first: the error is shown beside the field, what was typed kept.
    page.get_by_label("Epochs").fill("three")
    page.get_by_label("Optimizer").select_option("sgd")
    page.get_by_label("Layers").fill("[128, 64]")
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("#param-epochs-error")).to_contain_text("whole number")
    expect(page.get_by_label("Epochs")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Layers")).to_have_value("[128, 64]")

    page.get_by_label("Epochs").fill("5")
    page.get_by_label("Tags").fill("baseline, sweep")
    page.get_by_role("button", name="Explain").click()
    explanation = page.locator("#explanation")
    expect(explanation).to_contain_text("Admission would:")
    expect(explanation).to_contain_text("accept")
    expect(explanation.get_by_role("rowheader", name="role_may_submit")).to_be_visible()
    shot(page, "console-01-submit-explain")
    if out := os.environ.get("CSHARE_SCREENSHOTS"):
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / "submit-form.png"), full_page=True)

    # From the keyboard: Tab from the tags field reaches Explain, then Submit job.
    page.get_by_label("Tags").focus()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Explain")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Submit job")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}\?notice=submitted"))
    expect(page.get_by_role("status")).to_contain_text("Job submitted.")
    expect(page.locator("main")).to_contain_text("sgd")
    shot(page, "console-02-submitted-job")


def test_tokens_profile_and_registries_pages(browser: Any, site: tuple[str, ApiClient]) -> None:
    base, api = site
    owner = api.signup("olivia")
    slug = api.create_org(owner, name=f"Acme Research {uuid.uuid4().hex[:4]}")
    page = as_person(browser, base, owner).new_page()

    # Profile -> tokens, from the keyboard: name, Tab to the expiry, Tab to the button.
    page.goto(f"{base}/account")
    expect(page.get_by_role("heading", name="Account")).to_be_visible()
    page.get_by_label("when my job ends").select_option("all")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Job e-mail choice saved.")
    page.get_by_role("link", name="Manage your personal API tokens").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    page.get_by_label("Name", exact=False).first.fill("laptop-cli")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Expires after")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Create token")).to_be_focused()
    page.keyboard.press("Enter")
    secret = page.get_by_label("Token", exact=True).input_value()
    assert secret and api.get("/me", bearer(secret)).status_code == 200
    expect(page.get_by_role("rowheader", name="laptop-cli")).to_be_visible()
    shot(page, "console-03-token-created")
    page.goto(f"{base}/account/tokens")
    expect(page.get_by_label("Token", exact=True)).to_have_count(0)  # shown once
    page.get_by_role("button", name="Revoke laptop-cli").click()
    expect(page.get_by_role("status")).to_contain_text("Token revoked")
    assert api.get("/me", bearer(secret)).status_code == 401

    # Registries (admins): the password is never shown back.
    page.goto(f"{base}/orgs/{slug}")
    page.get_by_role("link", name="Registries").click()
    expect(page.get_by_role("heading", name="Container registries")).to_be_visible()
    page.get_by_role("textbox", name="Registry").fill("ghcr.io/acme-ml")
    page.get_by_label("Username").fill("robot")
    page.get_by_label("Password or access token").fill("hunter2-secret")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Save registry")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Registry added")
    expect(page.get_by_role("rowheader", name="ghcr.io/acme-ml")).to_be_visible()
    assert "hunter2-secret" not in page.content()
    shot(page, "console-04-registries")
