"""The data stores page in a real browser (Debian's headless Chromium, as in
test_web_browser.py): an admin sets the organization's store to an Azure container
(Azurite) and a project's default store to a GCS bucket (the emulator), sees them
listed with their credentials' public part only, and removes one; a member without the
permission gets no page. A wrong key comes back as a message beside the field, and the
form never sends the secret back.

Screenshots at 1280 px in artifacts/screenshots/ (datastores-*.png); every form control
must have a label.
"""

from __future__ import annotations

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
from tests.azurite_server import ACCOUNT, ACCOUNT_KEY
from tests.e2e.test_web_browser import browser
from tests.e2e.test_web_profile_browser import as_person, shot
from tests.support import ApiClient, serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

__all__ = ["browser"]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, ApiClient]]:
    db = Database(f"sqlite:///{tmp_path / 'cshare.db'}")
    upgrade(db.engine)
    settings = get_settings().model_copy(
        update={
            "notifications_enabled": False,
            "dispatcher_enabled": False,
            "store_endpoint_allowlist": "127.0.0.1/32",
        }
    )
    app = create_app(settings, db)
    with serve_in_thread(app) as url, TestClient(app, raise_server_exceptions=False) as client:
        yield url.removesuffix("/api/v1"), ApiClient(client, db)
    db.dispose()


def test_admin_sets_lists_and_removes_stores(
    browser: Any,
    site: tuple[str, ApiClient],
    azurite_endpoint: str,
    azure_container: str,
    gcs_endpoint: str,
    gcs_bucket: str,
) -> None:
    base, api = site
    owner, ada = api.signup("olivia"), api.signup("ada")
    slug = api.create_org(owner, name=f"Acme Research {uuid.uuid4().hex[:4]}")
    api.add_member(slug, owner, ada)
    assert api.post(f"/orgs/{slug}/projects", owner, json={"name": "vision"}).status_code == 201

    admin = as_person(browser, base, owner).new_page()
    admin.goto(f"{base}/orgs/{slug}/datastores")
    assert admin.get_by_role("link", name="Data stores").get_attribute("aria-current") == "page"
    shot(admin, "datastores-empty")

    # A wrong account key: refused by the probe, shown beside the container, not echoed.
    admin.locator("#ds-kind").select_option("azure")
    admin.locator("#ds-account").fill(ACCOUNT)
    admin.locator("#ds-container").fill(azure_container)
    admin.locator("#ds-endpoint_url").fill(azurite_endpoint)
    admin.locator("#ds-account_key").fill("d3Jvbmcta2V5")
    admin.get_by_role("button", name="Save store").click()
    error = admin.locator("#ds-container-error")
    assert "not usable" in error.inner_text()
    assert "d3Jvbmcta2V5" not in admin.content()
    assert admin.locator("#ds-account_key").input_value() == ""
    assert admin.locator("#ds-account").input_value() == ACCOUNT  # kept
    shot(admin, "datastores-error")

    admin.locator("#ds-kind").select_option("azure")
    admin.locator("#ds-container").fill(azure_container)
    admin.locator("#ds-account_key").fill(ACCOUNT_KEY)
    admin.get_by_role("button", name="Save store").click()
    assert "Data store saved" in admin.content()

    admin.locator("#ds-project").select_option("vision")
    admin.locator("#ds-kind").select_option("gcs")
    admin.locator("#ds-bucket").fill(gcs_bucket)
    admin.locator("#ds-endpoint_url").fill(gcs_endpoint)
    admin.get_by_role("button", name="Save store").click()
    assert "Data store saved" in admin.content()
    table = admin.locator("#stores-title + .table-wrap table")
    text = table.inner_text()
    assert "Azure Blob Storage" in text and azure_container in text and "account key" in text
    assert "Project vision" in text and "Google Cloud Storage" in text and gcs_bucket in text
    assert ACCOUNT_KEY not in admin.content()
    shot(admin, "datastores-set")

    # The API agrees with the page.
    assert api.get(f"/orgs/{slug}/datastore", owner).json()["kind"] == "azure"
    assert api.get(f"/orgs/{slug}/projects/vision/datastore", owner).json()["kind"] == "gcs"

    admin.get_by_role("button", name="Remove the store of Project vision").click()
    assert "Back to the default store" in admin.content()
    assert "Project vision" not in admin.locator("#stores-title + .table-wrap table").inner_text()
    assert api.get(f"/orgs/{slug}/projects/vision/datastore", owner).json()["kind"] == "default"

    # A member without the permission: no link, no page.
    member = as_person(browser, base, ada).new_page()
    member.goto(f"{base}/orgs/{slug}/datasets")
    assert member.get_by_role("link", name="Data stores").count() == 0
    response = member.goto(f"{base}/orgs/{slug}/datastores")
    assert response is not None and response.status in (403, 404)
