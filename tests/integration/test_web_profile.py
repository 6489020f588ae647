"""The console's side of the org profile and of rejoining, on both databases: the logo
and contact e-mail in the sidebar and settings, a former member asking from `/rejoin`
(reached from the 404 of the org they left), the admin deciding on the members page,
"do not allow rejoin" from the remove button, and the member's own usage panel."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from api.app import create_app
from orgs.config import get_settings
from orgs.db import Database
from orgs.models import FormerMember, JoinRequest, Organization
from tests.integration.test_web_pages import _browser
from tests.support import ApiClient, Person


@pytest.fixture
def site(database: Database) -> Iterator[tuple[ApiClient, TestClient]]:
    settings = get_settings().model_copy(update={"dispatcher_enabled": False})
    app = create_app(settings, database)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield ApiClient(client, database), client


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (250, 200, 0)).save(out, format="PNG")
    return out.getvalue()


def _people(api: ApiClient) -> tuple[Person, Person, str]:
    owner, ada = api.signup(), api.signup()
    slug = api.create_org(owner, name=f"Web profile {uuid.uuid4().hex[:6]}")
    api.add_member(slug, owner, ada)
    return owner, ada, slug


def test_logo_and_contact_from_the_settings_page(site: tuple[ApiClient, TestClient]) -> None:
    api, client = site
    owner, ada, slug = _people(api)
    admin = _browser(client.app, owner)
    r = admin.post(
        f"/orgs/{slug}/settings/general", {"name": "Acme Research", "contact_email": "it@acme.test"}
    )
    assert r.status_code == 303, r.text
    bad = admin.post(f"/orgs/{slug}/settings/general", {"name": "Acme", "contact_email": "nope"})
    assert bad.status_code == 422 and "contact_email is not a valid" in bad.text

    files = {"logo": ("logo.png", _png(), "image/png")}
    r = admin.client.post(
        f"/orgs/{slug}/settings/logo",
        files=files,
        data={"csrf_token": admin.token},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    svg = {"logo": ("logo.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")}
    r = admin.client.post(
        f"/orgs/{slug}/settings/logo", files=svg, data={"csrf_token": admin.token}
    )
    assert r.status_code == 422 and "SVG" in r.text

    member = _browser(client.app, ada)
    page = member.get(f"/orgs/{slug}")
    assert page.status_code == 200
    assert f'src="/orgs/{slug}/logo"' in page.text and "it@acme.test" in page.text
    logo = member.get(f"/orgs/{slug}/logo")
    assert logo.status_code == 200 and logo.headers["content-type"] == "image/png"
    assert logo.headers["x-content-type-options"] == "nosniff"
    # The member's own usage panel.
    assert "Your usage, last 30 days" in page.text and "Your storage" in page.text

    assert admin.post(f"/orgs/{slug}/settings/logo/delete").status_code == 303
    assert member.get(f"/orgs/{slug}/logo").status_code == 204
    assert 'class="org-logo"' not in member.get(f"/orgs/{slug}").text


def test_rejoin_from_the_console(site: tuple[ApiClient, TestClient]) -> None:
    api, client = site
    owner, ada, slug = _people(api)
    admin, former = _browser(client.app, owner), _browser(client.app, ada)
    assert former.post(f"/orgs/{slug}/leave", {"confirm": "yes"}).status_code == 303

    # The org's page is a 404 now, with the way to ask (for any slug alike).
    gone = former.get(f"/orgs/{slug}")
    assert gone.status_code == 404 and f"/rejoin?org={slug}" in gone.text
    unknown = former.get("/orgs/never-existed-xyz")
    assert unknown.status_code == 404 and "/rejoin?org=never-existed-xyz" in unknown.text

    page = former.get(f"/rejoin?org={slug}")
    assert page.status_code == 200 and f'value="{slug}"' in page.text
    r = former.post("/rejoin", {"org": slug, "note": "I am back"})
    assert r.status_code == 303 and r.headers["location"] == "/rejoin?notice=rejoin_sent"
    # An unknown slug gets exactly the same redirect.
    r2 = former.post("/rejoin", {"org": "never-existed-xyz"})
    assert r2.status_code == 303 and r2.headers["location"] == r.headers["location"]
    assert "waiting for an admin" in former.get("/rejoin").text

    members = admin.get(f"/orgs/{slug}/members")
    assert "Requests to rejoin" in members.text and "I am back" in members.text
    with api.db.session(write=False) as s:
        req_id = s.scalars(select(JoinRequest.id)).one()
    r = admin.post(f"/orgs/{slug}/join-requests/{req_id}/approve", {"role": "member"})
    assert r.status_code == 303
    assert former.get(f"/orgs/{slug}").status_code == 200

    # Removed with "do not allow rejoin": asking shows the refusal.
    r = admin.post(f"/orgs/{slug}/members/{ada.id}/remove", {"no_rejoin": "yes"})
    assert r.status_code == 303
    with api.db.session(write=False) as s:
        row = s.get(FormerMember, (uuid.UUID(api_org_id(api, slug)), uuid.UUID(ada.id)))
        assert row is not None and row.rejoin_blocked
    refused = former.post("/rejoin", {"org": slug})
    assert refused.status_code == 403 and "does not allow requests to rejoin" in refused.text


def api_org_id(api: ApiClient, slug: str) -> str:
    with api.db.session(write=False) as s:
        return str(s.scalars(select(Organization.id).where(Organization.slug == slug)).one())
