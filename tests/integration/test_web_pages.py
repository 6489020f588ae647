"""The web console's pages in-process: who sees which page and which controls, CSRF on
every form, forged posts refused by the server, the limits editor's inline errors,
invitation links, sign-in cookies, and that the API around the pages is unchanged.

The route x role matrix (test_permission_matrix) walks every page route x every role;
this module checks what the pages show (headers, controls, forms) for each role.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.web import csrf
from datasets import bundle_format
from flows import jobs
from orgs.config import get_settings
from orgs.context import member_context
from orgs.db import Database
from orgs.models import Machine, Membership, Organization, User
from tests.git_servers import GitDaemon
from tests.integration.test_jobs_support import FakePrefect
from tests.support import PREFIX, ApiClient, Person, insert_machine

ORG_PAGES = ("", "/members", "/machines", "/jobs", "/datasets", "/settings", "/audit")
ADMIN_PAGES = frozenset({"/settings", "/audit"})


@dataclass
class Visitor:
    """One browser: its own cookie jar on the shared app."""

    client: TestClient
    person: Person | None = None

    @property
    def token(self) -> str:
        session = self.client.cookies.get("cshare_session")
        return csrf.token_for_session(session) if session else ""

    def get(self, path: str, **kw: object):
        return self.client.get(path, follow_redirects=False, **kw)

    def post(self, path: str, data: Mapping[str, object] | None = None, *, token: bool = True):
        form = dict(data or {})
        if token:
            form.setdefault(csrf.CSRF_FIELD, self.token)
        return self.client.post(path, data=form, follow_redirects=False)


@dataclass
class World:
    api: ApiClient
    db: Database
    slug: str
    owner: Visitor
    admin: Visitor
    member: Visitor
    outsider: Visitor
    anonymous: Visitor
    machine_id: str

    def visitor(self, role: str) -> Visitor:
        return getattr(self, role)  # type: ignore[no-any-return]

    def org(self) -> Organization | None:
        with self.db.session(write=False) as s:
            return s.scalars(select(Organization).where(Organization.slug == self.slug)).first()


def _browser(app: object, person: Person | None = None) -> Visitor:
    client = TestClient(app, raise_server_exceptions=False)  # type: ignore[arg-type]
    if person is not None:
        # The session token the REST sign-up returned is exactly what the cookie holds.
        client.cookies.set("cshare_session", person.token)
    return Visitor(client, person)


@pytest.fixture
def world(database: Database) -> Iterator[World]:
    settings = get_settings().model_copy(
        update={"notifications_enabled": False, "dispatcher_enabled": False}
    )
    gateway: Any = FakePrefect()  # the PrefectGateway stand-in of the job tests
    app = create_app(settings, database, gateway)
    with TestClient(app, raise_server_exceptions=False) as client:
        api = ApiClient(client, database)
        owner, admin, member, outsider = (api.signup() for _ in range(4))
        slug = api.create_org(owner, name=f"Web {uuid.uuid4().hex[:6]}")
        api.add_member(slug, owner, admin, "admin")
        api.add_member(slug, owner, member, "member")
        api.create_org(outsider)
        # A pending machine of the member's, for the approve/reject controls.
        machine_id = insert_machine(database, slug, member.id, "m-pending")
        with database.transaction() as s:
            row = s.get(Machine, uuid.UUID(machine_id))
            assert row is not None
            row.status = "pending"
        yield World(
            api=api,
            db=database,
            slug=slug,
            owner=_browser(app, owner),
            admin=_browser(app, admin),
            member=_browser(app, member),
            outsider=_browser(app, outsider),
            anonymous=_browser(app),
            machine_id=machine_id,
        )


# ------------------------------------------------------------------ who sees what


@pytest.mark.parametrize("role", ["owner", "admin", "member", "outsider", "anonymous"])
def test_each_page_renders_for_the_roles_that_may_see_it(world: World, role: str) -> None:
    who = world.visitor(role)
    for page in ORG_PAGES:
        path = f"/orgs/{world.slug}{page}"
        r = who.get(path)
        if role == "anonymous":
            assert r.status_code == 303, (path, r.status_code)
            assert r.headers["location"].startswith("/login?next=")
        elif role == "outsider":
            assert r.status_code == 404, (path, r.status_code)
            org = world.org()
            assert org is not None and org.name not in r.text  # nothing about the org leaks
        elif role == "member" and page in ADMIN_PAGES:
            assert r.status_code == 403, (path, r.status_code)
        else:
            assert r.status_code == 200, (path, r.status_code, r.text[:500])
            assert r.headers["content-type"].startswith("text/html")
            assert "no-store" in r.headers["cache-control"]
            assert "default-src 'self'" in r.headers["content-security-policy"]


def test_controls_a_role_may_not_use_are_not_rendered(world: World) -> None:
    base = f"/orgs/{world.slug}"
    member = world.member.get(base + "/members").text
    assert "Invite Member" not in member
    assert "Change role" not in member and "Revoke" not in member and ">Remove<" not in member
    nav = world.member.get(base).text
    assert f'href="{base}/settings"' not in nav and f'href="{base}/audit"' not in nav
    assert "Compute time per user" not in nav  # the usage chart is for admins
    machines = world.member.get(base + "/machines").text
    assert "Approve" not in machines and "Reject" not in machines
    assert "Remove<span" in machines  # their own machine: removable

    admin = world.admin.get(base + "/members").text
    assert "Invite Member" in admin
    # Admins manage members but not admins nor the owner, and never hand out admin.
    assert '<option value="admin"' not in admin.split('id="invite"')[1].split("</form>")[0]
    owner = world.owner.get(base + "/members").text
    assert '<option value="admin"' in owner
    assert "Approve" in world.admin.get(base + "/machines").text
    # The table's own refresh (htmx) gets the table alone, with the same controls.
    partial = world.admin.get(base + "/machines", headers={"HX-Request": "true"}).text
    assert "<html" not in partial and "m-pending" in partial and "Approve" in partial
    dashboard = world.admin.get(base).text
    assert "Compute time per user" in dashboard and f'href="{base}/settings"' in dashboard
    # The Danger Zone is the owner's.
    assert "Danger Zone" not in world.admin.get(base + "/settings").text
    assert "Danger Zone" in world.owner.get(base + "/settings").text


def test_machine_memory_reads_in_gib(world: World) -> None:
    with world.db.transaction() as s:
        row = s.get(Machine, uuid.UUID(world.machine_id))
        assert row is not None
        row.hardware = {"cpu_count": 8, "memory_mb": 24104}  # as agents.hardware reports it
    page = world.admin.get(f"/orgs/{world.slug}/machines").text
    assert "8 CPU · 23.5 GiB" in page


# ------------------------------------------------------------------ CSRF


def test_state_changing_requests_need_the_csrf_token(world: World) -> None:
    base = f"/orgs/{world.slug}"
    # Signed in: no token, a wrong token, and another session's token are all refused.
    for data in ({}, {csrf.CSRF_FIELD: "x" * 64}):
        r = world.owner.post(base + "/settings/general", {"name": "Renamed", **data}, token=False)
        assert r.status_code == 403
    r = world.owner.post(
        base + "/settings/general", {"name": "Renamed", csrf.CSRF_FIELD: world.admin.token}
    )
    assert r.status_code == 403
    org = world.org()
    assert org is not None and org.name != "Renamed"
    # The header works too (htmx, the upload script).
    r = world.owner.client.post(
        base + "/settings/general",
        data={"name": "Renamed"},
        headers={csrf.CSRF_HEADER: world.owner.token},
        follow_redirects=False,
    )
    assert r.status_code == 303
    org = world.org()
    assert org is not None and org.name == "Renamed"
    # Signed out: the sign-in form carries a double-submit token from its cookie.
    visitor = world.anonymous
    r = visitor.post("/login", {"email": "x@example.test", "password": "whatever1"}, token=False)
    assert r.status_code == 403
    page = visitor.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    assert visitor.client.cookies.get(csrf.CSRF_COOKIE) == token.group(1)
    person = world.owner.person
    assert person is not None
    r = visitor.client.post(
        "/login",
        data={
            "email": person.email,
            "password": f"pw-{person.name}-secret",
            csrf.CSRF_FIELD: token.group(1),
        },
        follow_redirects=False,
    )
    assert r.status_code == 303


def test_a_members_forged_posts_to_admin_actions_are_refused(world: World) -> None:
    base = f"/orgs/{world.slug}"
    owner_id = world.owner.person.id if world.owner.person else ""
    admin_id = world.admin.person.id if world.admin.person else ""
    r = world.api.post(f"/orgs/{world.slug}/invitations", world.owner.person, json={})
    invitation_id = r.json()["id"]
    forged = {
        "/settings/general": {"name": "Hijacked"},
        "/settings/invitations": {"who_may_invite": "members", "default_expiry_hours": "1"},
        "/settings/machines": {"offline_after_s": "60"},
        "/settings/limits": {"mode": "yaml", "yaml": "organization: {}"},
        "/settings/notifications/test": {},
        "/settings/delete": {"confirm": "anything"},
        f"/invitations/{invitation_id}/revoke": {},
        f"/members/{admin_id}/role": {"role": "member"},
        f"/members/{owner_id}/remove": {},
        f"/machines/{world.machine_id}/approve": {},
        f"/machines/{world.machine_id}/reject": {"reason": "no"},
        "/invitations": {"role": "admin"},
    }
    for path, data in forged.items():
        r = world.member.post(base + path, data)
        assert r.status_code == 403, (path, r.status_code, r.text[:300])
        # Someone outside the organization is told it does not exist.
        r = world.outsider.post(base + path, data)
        assert r.status_code == 404, (path, r.status_code)
    org = world.org()
    assert org is not None and not org.name.startswith("Hijacked")
    with world.db.session(write=False) as s:
        machine = s.get(Machine, uuid.UUID(world.machine_id))
        assert machine is not None and machine.status == "pending"
        roles = {uid: role for uid, role in s.execute(select(Membership.user_id, Membership.role))}
        assert roles[uuid.UUID(admin_id)] == "admin"


def test_admin_actions_work_for_admins(world: World) -> None:
    base = f"/orgs/{world.slug}"
    r = world.admin.post(base + f"/machines/{world.machine_id}/approve")
    assert r.status_code == 303 and r.headers["location"].endswith("notice=approved")
    r = world.admin.post(base + "/invitations", {"role": "member", "max_uses": "2"})
    assert r.status_code == 201
    assert re.search(r'id="inv-link" readonly value="[^"]*/invitations/cs_i_', r.text)
    r = world.admin.post(base + "/invitations", {"role": "member", "max_uses": "lots"})
    assert r.status_code == 422 and "Enter a whole number." in r.text
    member_id = world.member.person.id if world.member.person else ""
    r = world.admin.post(base + f"/members/{member_id}/role", {"role": "admin"})
    assert r.status_code == 403  # only the owner hands out admin
    r = world.owner.post(base + f"/members/{member_id}/role", {"role": "admin"})
    assert r.status_code == 303


# ------------------------------------------------------------------ settings


def _limits_form(**overrides: str) -> dict[str, object]:
    data: dict[str, object] = {
        "mode": "form",
        "limits.max_machines_per_user": "10",
        "limits.max_concurrent_jobs_per_user": "20",
        "limits.max_queued_jobs_per_user": "500",
        "limits.max_job_runtime": "3600",
        "limits.max_job_memory": "4096",
        "type-0-name": "cpu",
        "type-0-max_scale": "100",
        "type-0-per_user_quota": "20",
        "type-1-name": "",
        "type-1-max_scale": "",
        "type-1-per_user_quota": "",
    }
    data.update(overrides)
    return data


def _error_beside(html: str, key: str) -> str:
    """The error text inside the form field whose data-key is `key`."""
    match = re.search(
        rf'data-key="{re.escape(key)}".*?<p class="field-error"[^>]*>(.*?)</p>', html, re.S
    )
    assert match is not None, f"no error beside {key}"
    block = html.split(f'data-key="{key}"', 1)[1].split('class="field limit-field', 1)[0]
    assert match.group(1) in block, f"the error is not inside {key}'s field"
    return match.group(1)


def test_the_limits_editor_shows_the_error_beside_the_offending_key(world: World) -> None:
    path = f"/orgs/{world.slug}/settings/limits"
    r = world.owner.post(path, _limits_form(**{"limits.max_job_runtime": "abc"}))
    assert r.status_code == 422
    message = _error_beside(r.text, "organization.limits.max_job_runtime")
    assert "max_job_runtime must be an integer" in message
    assert r.text.count('class="field-error"') == 1  # nothing else is marked
    assert (
        'id="lim-max_job_runtime" name="limits.max_job_runtime" inputmode="numeric" value="abc"'
        in r.text
    )

    r = world.owner.post(path, _limits_form(**{"limits.max_job_memory": "99999999999"}))
    assert r.status_code == 422
    assert "at most" in _error_beside(r.text, "organization.limits.max_job_memory")

    # A machine type's key: the error sits in that type's row.
    r = world.owner.post(
        path,
        _limits_form(
            **{"type-1-name": "gpu", "type-1-max_scale": "0", "type-1-per_user_quota": "1"}
        ),
    )
    assert r.status_code == 422
    row = r.text.split('id="type-1-max_scale"', 1)[1].split("</td>", 1)[0]
    assert 'id="type-1-max_scale-error"' in row and "max_scale" in row

    # YAML mode: the policy's sentence, and the offending line marked in place.
    yaml_text = "organization:\n  limits:\n    max_job_runtim: 10\n"
    r = world.owner.post(path, {"mode": "yaml", "yaml": yaml_text})
    assert r.status_code == 422
    assert "Unknown key &#39;max_job_runtim&#39;" in r.text and "did you mean" in r.text
    marked = re.search(r'<li class="bad-line"><code>(.*?)</code>', r.text)
    assert marked is not None and "max_job_runtim: 10" in marked.group(1)

    # Valid values save, and the settings version moves on.
    before = world.org()
    r = world.owner.post(path, _limits_form(**{"limits.max_job_runtime": "7200"}))
    assert r.status_code == 303
    after = world.org()
    assert before is not None and after is not None
    assert after.settings["limits"]["organization"]["limits"]["max_job_runtime"] == 7200
    assert after.settings_version == before.settings_version + 1


def test_deleting_the_org_needs_its_exact_name(world: World) -> None:
    org = world.org()
    assert org is not None
    path = f"/orgs/{world.slug}/settings/delete"
    r = world.owner.post(path, {"confirm": org.name.upper()})
    assert r.status_code == 422 and 'id="delete-confirm-error"' in r.text
    assert world.org() is not None
    r = world.admin.post(path, {"confirm": org.name})
    assert r.status_code == 403
    r = world.owner.post(path, {"confirm": org.name})
    assert r.status_code == 303 and world.org() is None


def test_leaving_needs_a_confirmation_and_the_last_owner_cannot_leave(world: World) -> None:
    path = f"/orgs/{world.slug}/leave"
    r = world.member.post(path, {})
    assert r.status_code == 422 and "Tick the box" in r.text
    r = world.owner.post(path, {"confirm": "yes"})
    assert r.status_code == 409 and "last owner" in r.text
    r = world.member.post(path, {"confirm": "yes"})
    assert r.status_code == 303
    assert world.member.get(f"/orgs/{world.slug}").status_code == 404


# ------------------------------------------------------------------ accounts


def test_sign_up_sets_a_safe_cookie_and_sign_out_revokes_it(world: World) -> None:
    visitor = world.anonymous
    page = visitor.get("/signup")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    name = f"w{uuid.uuid4().hex[:8]}"
    r = visitor.client.post(
        "/signup",
        data={
            "email": f"{name}@example.test",
            "name": name,
            "password": "long-enough-pw",
            csrf.CSRF_FIELD: token.group(1),
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/welcome"
    cookie = r.headers["set-cookie"]
    assert "cshare_session=cs_s_" in cookie and "HttpOnly" in cookie
    assert "SameSite=lax" in cookie or "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http in tests; https requests get Secure
    session_token = visitor.client.cookies.get("cshare_session")
    assert (
        world.api.get("/me", headers={"Authorization": f"Bearer {session_token}"}).status_code
        == 200
    )
    welcome = visitor.get("/welcome")
    assert (
        "Create new organization" in welcome.text and "Join with an invitation code" in welcome.text
    )
    r = visitor.post("/logout")
    assert r.status_code == 303
    assert (
        world.api.get("/me", headers={"Authorization": f"Bearer {session_token}"}).status_code
        == 401
    )
    # A bad password re-renders the form with the service's sentence.
    r = visitor.client.post(
        "/login",
        data={
            "email": f"{name}@example.test",
            "password": "wrong-password",
            csrf.CSRF_FIELD: visitor.client.cookies.get(csrf.CSRF_COOKIE) or "",
        },
        follow_redirects=False,
    )
    assert r.status_code == 401 and "Wrong email or password." in r.text


def test_https_requests_get_a_secure_cookie(world: World) -> None:
    client = TestClient(world.api.client.app, base_url="https://testserver")
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    assert "Secure" in page.headers["set-cookie"]
    person = world.owner.person
    assert person is not None
    r = client.post(
        "/login",
        data={
            "email": person.email,
            "password": f"pw-{person.name}-secret",
            csrf.CSRF_FIELD: token.group(1),
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_an_invitation_link_signs_in_first_then_joins(world: World) -> None:
    r = world.api.post(f"/orgs/{world.slug}/invitations", world.owner.person, json={"max_uses": 1})
    code = r.json()["code"]
    link = f"/invitations/{code}"
    r = world.anonymous.get(link)
    assert r.status_code == 303 and r.headers["location"].startswith(
        "/login?next=%2Finvitations%2F"
    )
    newcomer = _browser(world.api.client.app, world.api.signup())
    page = newcomer.get(link)
    org = world.org()
    assert org is not None
    assert page.status_code == 200 and f"Join {org.name}" in page.text
    r = newcomer.post(link + "/accept")
    assert r.status_code == 303 and r.headers["location"] == f"/orgs/{world.slug}?notice=joined"
    assert newcomer.get(f"/orgs/{world.slug}").status_code == 200
    assert "already a member" in newcomer.get(link).text
    # Used up: another person is told so, and the join form says why.
    late = _browser(world.api.client.app, world.api.signup())
    assert "can no longer be used" in late.get(link).text
    r = late.post("/join", {"code": f"http://elsewhere{link}"})
    assert r.status_code == 409 and "no uses left" in r.text
    assert late.get(f"/invitations/cs_i_{'x' * 20}").status_code == 404


def test_create_an_org_from_the_first_sign_in_page(world: World) -> None:
    newcomer = _browser(world.api.client.app, world.api.signup())
    assert newcomer.get("/").headers["location"] == "/welcome"
    r = newcomer.post("/orgs/new", {"name": "", "description": ""})
    assert r.status_code == 422 and "Organization names are 1-100" in r.text
    r = newcomer.post("/orgs/new", {"name": "Team Rocket", "description": "ML"})
    assert r.status_code == 303
    slug = r.headers["location"].split("/orgs/")[1].split("?")[0]
    assert newcomer.get("/").headers["location"] == f"/orgs/{slug}"


# ------------------------------------------------------------------ datasets and jobs


def test_dataset_upload_and_download_through_the_page_routes(world: World) -> None:
    base = f"/orgs/{world.slug}/datasets"
    r = world.member.post(base, {"name": "bad name!", "visibility": "org"})
    assert r.status_code == 422 and 'id="ds-name-error"' in r.text
    r = world.member.post(base, {"name": "samples", "visibility": "restricted"})
    assert r.status_code == 303
    payload = bytes(range(256)) * 4096
    r = world.member.client.post(
        f"{base}/samples/versions?filename=samples.bin",
        content=payload,
        headers={"Content-Type": "application/octet-stream", "Accept": "application/json"},
    )
    assert r.status_code == 403  # no CSRF header
    r = world.member.client.post(
        f"{base}/samples/versions?filename=samples.bin",
        content=payload,
        headers={
            "Content-Type": "application/octet-stream",
            "Accept": "application/json",
            csrf.CSRF_HEADER: world.member.token,
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["size"] == len(payload)
    download = world.member.get(f"{base}/samples/versions/1/download")
    assert download.status_code == 200 and download.content == payload
    detail = world.member.get(f"{base}/samples")
    assert r.json()["sha256"][:16] in detail.text
    # Restricted: another member does not see it (404), an admin does.
    assert world.outsider.get(f"{base}/samples").status_code == 404
    assert world.admin.get(f"{base}/samples").status_code == 200
    assert "samples" in world.admin.get(base).text
    r = world.member.post(f"{base}/samples/delete", {"confirm": "sample"})
    assert r.status_code == 422
    r = world.member.post(f"{base}/samples/delete", {"confirm": "samples"})
    assert r.status_code == 303
    assert world.member.get(f"{base}/samples").status_code == 404


def _submit(world: World, who: Person) -> str:
    gateway = world.api.client.app.state.gateway  # type: ignore[attr-defined]
    with world.db.session() as s:
        user = s.get(User, uuid.UUID(who.id))
        assert user is not None
        ctx = member_context(s, world.slug, user)
        job, _ = jobs.submit(ctx, s, gateway, jobs.SubmitSpec(deployment="train"))
        return str(job.id)


def test_jobs_pages_show_own_jobs_to_members_and_all_to_admins(world: World) -> None:
    owner = world.owner.person
    member = world.member.person
    assert owner is not None and member is not None
    r = world.api.post(
        f"/orgs/{world.slug}/deployments",
        owner,
        json={"name": "train", "entrypoint": "flows/library/train.py:train", "machine_type": "cpu"},
    )
    assert r.status_code in (200, 201), r.text
    # Submitted through the service (as the API does), run created at once.
    mine = {"id": _submit(world, member)}
    theirs = {"id": _submit(world, owner)}
    base = f"/orgs/{world.slug}/jobs"
    listing = world.member.get(base).text
    assert mine["id"][:8] in listing and theirs["id"][:8] not in listing
    admin_listing = world.admin.get(base).text
    assert mine["id"][:8] in admin_listing and theirs["id"][:8] in admin_listing
    assert world.member.get(f"{base}/{theirs['id']}").status_code == 404
    page = world.member.get(f"{base}/{mine['id']}")
    assert page.status_code == 200 and "Open in Prefect UI" in page.text
    assert world.member.get(f"{base}/{mine['id']}/logs").status_code == 200
    filtered = world.admin.get(f"{base}?state=held")
    assert filtered.status_code == 200 and "No jobs" in filtered.text
    assert world.admin.get(f"{base}?state=bogus").status_code == 422
    r = world.member.post(f"{base}/{theirs['id']}/cancel")
    assert r.status_code == 404
    r = world.member.post(f"{base}/{mine['id']}/rerun")
    assert r.status_code == 303 and "notice=rerun" in r.headers["location"]
    r = world.member.post(f"{base}/{mine['id']}/cancel")
    assert r.status_code == 303


def test_job_page_shows_the_code_and_rerun_keeps_it(world: World, tmp_path: Path) -> None:
    owner = world.owner.person
    assert owner is not None
    digests = []
    for value in (1, 2):
        (tmp_path / "flow.py").write_text(f"V = {value}\n")
        out = io.BytesIO()
        packed = bundle_format.pack(tmp_path, ["flow.py"], out)
        r = world.api.put(
            f"/orgs/{world.slug}/bundles/{packed.digest}?files=1",
            owner,
            content=out.getvalue(),
            headers={"Content-Type": bundle_format.MEDIA_TYPE},
        )
        assert r.status_code == 201, r.text
        digests.append(packed.digest)
    body = {"name": "train", "entrypoint": "flow.py:train", "machine_type": "cpu"}
    code = {"kind": "bundle", "digest": digests[0]}
    r = world.api.post(f"/orgs/{world.slug}/deployments", owner, json={**body, "code": code})
    assert r.status_code == 201, r.text
    old = _submit(world, owner)
    r = world.api.post(
        f"/orgs/{world.slug}/deployments",
        owner,
        json={**body, "code": {"kind": "bundle", "digest": digests[1]}},
    )
    assert r.status_code == 200, r.text
    base = f"/orgs/{world.slug}/jobs"
    page = world.owner.get(f"{base}/{old}").text
    assert digests[0][:19] in page and ">Rerun<" in page
    r = world.owner.post(f"{base}/{old}/rerun")
    assert r.status_code == 303, r.text
    new_page = world.owner.get(r.headers["location"].split("?")[0]).text
    assert digests[0][:19] in new_page and digests[1][:19] not in new_page


def test_job_page_shows_a_git_jobs_commit(world: World, git_daemon: GitDaemon) -> None:
    owner = world.owner.person
    assert owner is not None
    repo = git_daemon.repo("web")
    commit = repo.commit({"flow.py": "V = 1\n"})
    world.api.set_settings(git_host_allowlist="127.0.0.1/32")
    r = world.api.post(
        f"/orgs/{world.slug}/deployments",
        owner,
        json={
            "name": "train",
            "entrypoint": "flow.py:train",
            "git": {"repository": git_daemon.url(repo), "ref": "main"},
        },
    )
    assert r.status_code == 201, r.text
    page = world.owner.get(f"/orgs/{world.slug}/jobs/{_submit(world, owner)}").text
    assert git_daemon.url(repo) in page and commit[:12] in page


# ------------------------------------------------------------------ the API around the pages


def test_the_api_is_unchanged_by_the_pages(world: World) -> None:
    client = world.api.client
    r = client.get(PREFIX + "/no/such/route")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert client.post("/healthz").status_code == 405
    assert client.get("/healthz").json()
    paths = client.get("/openapi.json").json()["paths"]
    assert all(p.startswith(PREFIX) or p in ("/healthz", "/readyz", "/metrics") for p in paths)
    assert client.get("/static/htmx.min.js").status_code == 200
    assert client.get("/no/such/page").status_code == 404
    assert "There is no such page" in client.get("/no/such/page").text
