"""Project visibility: a generated route x role x team matrix, on both backends.

The routes come from the app (`create_app().routes` and the console mounted in it, as
the permission matrix reads them): every API and console route inside an organization
whose path names a project, deployment, job or schedule (`RESOURCE_RE`), and every list
of those (`LIST_RE`). A world has a project visible only to team `blue`, with a
deployment, a schedule and jobs of each person, and four callers:

- owner, admin: see everything;
- member_in (in `blue`): sees the project and what is in it;
- member_out (not in `blue`; their own job was submitted while the project was still
  visible to the organization): 404 on every such route, whatever the method, and none
  of the hidden names or ids in any list.

For the callers who see it only safe methods (GET) are sent, so no case changes the
world. A route added later that names one of these resources is covered without editing
this file; one whose path parameter or body this file cannot fill fails, and one that
forgets the visibility check fails for member_out.
"""

from __future__ import annotations

import io
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.web import csrf
from api.web import session as web_session
from datasets import bundle_format
from orgs.db import Database
from policies.permissions import ROLE_PERMISSIONS, Role
from tests.integration.test_jobs_support import OrgSetup, jobs_app, setup_org
from tests.integration.test_permission_matrix import (
    PAGE_RULES,
    RULES,
    MatrixPrefect,
    RouteRule,
)
from tests.support import ApiClient, Person

pytestmark = pytest.mark.timeout(300)

RESOURCE_RE = re.compile(r"/(projects|deployments|jobs|schedules)/\{[a-z_]+\}")
LIST_RE = re.compile(r"^/orgs/\{org\}/(projects|deployments|jobs|schedules)$")
ROLES = ("owner", "admin", "member_in", "member_out")
SEES = {"owner": True, "admin": True, "member_in": True, "member_out": False}

# Bodies for routes that validate one before looking the resource up ("METHOD path").
BODIES: dict[str, dict[str, Any]] = {
    "PUT /orgs/{org}/projects/{name}/git-token": {"token": "visibility-matrix"},
    "PATCH /orgs/{org}/schedules/{id}": {"active": False},
    "PUT /orgs/{org}/projects/{project}/datastore": {"kind": "default"},
}


@dataclass
class World:
    api: ApiClient
    org: OrgSetup
    people: dict[str, Person]
    project: str
    deployment: str
    schedule: str
    jobs: dict[str, str] = field(default_factory=dict)

    def hidden(self) -> list[str]:
        return [self.project, self.deployment, self.schedule, *self.jobs.values()]


def _bundle(api: ApiClient, org: OrgSetup) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "flow.py").write_text(f"# {uuid.uuid4()}\n")
        out = io.BytesIO()
        packed = bundle_format.pack(Path(tmp), ["flow.py"], out)
    r = api.put(
        f"/orgs/{org.slug}/bundles/{packed.digest}",
        org.owner,
        content=out.getvalue(),
        headers={"Content-Type": bundle_format.MEDIA_TYPE},
    )
    assert r.status_code in (200, 201), r.text
    return packed.digest


def build_world(api: ApiClient) -> World:
    tag = uuid.uuid4().hex[:8]
    org = setup_org(api, f"vis{tag}")
    people = {
        "owner": org.owner,
        "admin": org.add_member("admin"),
        "member_in": org.add_member(),
        "member_out": org.add_member(),
    }
    base = f"/orgs/{org.slug}"
    assert api.post(f"{base}/teams", org.owner, json={"name": "blue"}).status_code == 201
    r = api.post(f"{base}/teams/blue/members", org.owner, json={"user": people["member_in"].name})
    assert r.status_code == 201, r.text
    project = f"proj-{tag}"
    r = api.post(f"{base}/projects", org.owner, json={"name": project})
    assert r.status_code == 201, r.text
    # Its Git credentials, so their routes have something to show to those who see it.
    assert api.post(f"{base}/projects/{project}/deploy-key", org.owner, json={}).status_code == 201
    r = api.put(f"{base}/projects/{project}/git-token", org.owner, json={"token": "t"})
    assert r.status_code == 200, r.text
    deployment = f"dep-{tag}"
    r = api.post(
        f"{base}/deployments",
        org.owner,
        json={
            "name": deployment,
            "entrypoint": "flows/library/train.py:train",
            "machine_type": "cpu",
            "project": project,
            "code": {"kind": "bundle", "digest": _bundle(api, org)},
        },
    )
    assert r.status_code == 201, r.text
    world = World(api, org, people, project, deployment, schedule="")
    for role, person in people.items():
        r = org.submit(person, deployment)
        assert r.status_code == 201, (role, r.text)
        world.jobs[role] = r.json()["id"]
    r = api.post(
        f"{base}/schedules", org.owner, json={"deployment": deployment, "cron": "0 3 * * *"}
    )
    assert r.status_code == 201, r.text
    world.schedule = r.json()["id"]
    # Now shared with `blue` only: member_out's own job disappears with it.
    r = api.patch(
        f"{base}/projects/{project}", org.owner, json={"visibility": "teams", "teams": ["blue"]}
    )
    assert (r.status_code, r.json()["visibility"], r.json()["teams"]) == (200, "teams", ["blue"])
    return world


@pytest.fixture
def world(database: Database) -> Iterator[World]:
    with jobs_app(database, MatrixPrefect()) as api:
        yield build_world(api)


# ----------------------------------------------------------------------- the cases


def _fill(rule: RouteRule, w: World, role: str) -> str:
    fillers: dict[str, Callable[[], str]] = {
        "projects": lambda: w.project,
        "deployments": lambda: w.deployment,
        "jobs": lambda: w.jobs[role],
        "schedules": lambda: w.schedule,
    }
    path = _path(rule).replace("{org}", w.org.slug)
    for match in list(re.finditer(r"/([a-z_-]+)/\{([a-z_]+)\}", path)):
        filler = fillers.get(match.group(1))
        if filler is None:
            pytest.fail(f"{rule.label}: cannot fill {{{match.group(2)}}} after {match.group(1)}/")
        path = path.replace(match.group(0), f"/{match.group(1)}/{filler()}", 1)
    return path


def _path(rule: RouteRule) -> str:
    """The route's path without the API prefix (the clients add it)."""
    return rule.label.split(" ", 1)[1]


def resource_rules() -> list[RouteRule]:
    return [
        r
        for r in RULES + PAGE_RULES
        if r.kind == "org" and RESOURCE_RE.search(r.path) and not r.path.endswith("/registry-auth")
    ]


def list_rules() -> list[RouteRule]:
    return [
        r
        for r in RULES + PAGE_RULES
        if r.kind == "org" and r.method == "GET" and LIST_RE.match(_path(r))
    ]


def _send(w: World, rule: RouteRule, role: str, url: str) -> httpx.Response:
    person = w.people[role]
    if rule.surface == "console":
        browser = TestClient(
            w.api.client.app, raise_server_exceptions=False, follow_redirects=False
        )
        browser.cookies.set(web_session.SESSION_COOKIE, person.token)
        form = {csrf.CSRF_FIELD: csrf.token_for_session(person.token)}
        page: httpx.Response = (
            browser.get(url)
            if rule.method == "GET"
            else browser.request(rule.method, url, data=form)
        )
        return page
    body = BODIES.get(rule.label, {} if rule.has_body else None)
    return w.api.request(rule.method, url, person, json=body)


def test_the_matrix_covers_the_resources() -> None:
    """The generated sets hold what this file is about (a renamed path would empty them)."""
    labels = {f"{r.surface} {r.label}" for r in resource_rules()}
    for expected in (
        "api GET /orgs/{org}/projects/{name}",
        "api GET /orgs/{org}/deployments/{name}",
        "api GET /orgs/{org}/jobs/{id}",
        "api POST /orgs/{org}/jobs/{id}/cancel",
        "api DELETE /orgs/{org}/schedules/{id}",
        "console GET /orgs/{org}/jobs/{job_id}",
        "console GET /orgs/{org}/projects/{name}",
    ):
        assert expected in labels, expected
    lists = {f"{r.surface} {r.label}" for r in list_rules()}
    assert {"api GET /orgs/{org}/jobs", "console GET /orgs/{org}/projects"} <= lists


def _members_may(rule: RouteRule) -> bool:
    """Whether the member role holds the route's permission (else every member gets 403
    whatever the resource, which says nothing about whether it exists)."""
    return rule.permission is None or rule.permission in ROLE_PERMISSIONS[Role.member]


def test_route_x_role_x_team(world: World) -> None:
    wrong: list[str] = []
    for rule in resource_rules():
        for role in ROLES:
            if SEES[role] and rule.method != "GET":
                continue  # the callers who see it only read (the world stays as it is)
            r = _send(world, rule, role, _fill(rule, world, role))
            if r.status_code == 422 and rule.surface == "api":
                wrong.append(f"{rule.label} as {role}: 422 (add a body to BODIES): {r.text[:200]}")
            elif SEES[role] and (r.status_code == 404 or r.status_code >= 500):
                wrong.append(
                    f"{rule.surface} {rule.label} as {role}: {r.status_code}, expected visible"
                )
            elif not SEES[role] and r.status_code == 403 and not _members_may(rule):
                continue  # refused by role before any lookup: the same for every name
            elif not SEES[role] and r.status_code != 404:
                wrong.append(
                    f"{rule.surface} {rule.label} as {role}: {r.status_code}, expected 404"
                )
    for rule in list_rules():
        for role in ROLES:
            url = _path(rule).replace("{org}", world.org.slug)
            r = _send(world, rule, role, url)
            shown = [h for h in world.hidden() if h in r.text]
            if r.status_code != 200:
                wrong.append(f"{rule.surface} {rule.label} as {role}: {r.status_code}")
            elif SEES[role] and not shown:
                wrong.append(f"{rule.surface} {rule.label} as {role}: hides what they may see")
            elif not SEES[role] and shown:
                wrong.append(f"{rule.surface} {rule.label} as {role}: shows {shown}")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------ personal projects


def test_personal_projects_and_allow_personal(database: Database) -> None:
    with jobs_app(database, MatrixPrefect()) as api:
        org = setup_org(api, f"pp{uuid.uuid4().hex[:6]}")
        base = f"/orgs/{org.slug}"
        admin, alice, bob = org.add_member("admin"), org.add_member(), org.add_member()

        r = api.post(f"{base}/projects", alice, json={"name": "mine", "visibility": "personal"})
        assert (r.status_code, r.json()["visibility"]) == (201, "personal")
        for who, sees in ((alice, True), (admin, True), (org.owner, True), (bob, False)):
            names = [p["name"] for p in api.get(f"{base}/projects", who).json()["items"]]
            assert ("mine" in names) is sees, who.name
            assert (api.get(f"{base}/projects/mine", who).status_code == 200) is sees
        dep = {
            "name": "mine-train",
            "entrypoint": "flows/library/train.py:train",
            "machine_type": "cpu",
            "project": "mine",
            "code": {"kind": "bundle", "digest": _bundle(api, org)},
        }
        assert api.post(f"{base}/deployments", alice, json=dep).status_code == 201
        # Bob cannot deploy into it: for him it does not exist.
        r = api.post(f"{base}/deployments", bob, json={**dep, "name": "bobs"})
        assert (r.status_code, r.json()["error"]) == (422, "project_not_found")

        for bad, field_name in (
            ({"visibility": "everyone"}, "visibility"),
            ({"visibility": "teams"}, "teams"),
            ({"visibility": "teams", "teams": ["nope"]}, "teams"),
            ({"visibility": "org", "teams": ["nope"]}, "teams"),
        ):
            r = api.post(f"{base}/projects", alice, json={"name": "x1", **bad})
            assert (r.status_code, r.json().get("field")) == (422, field_name), (bad, r.text)

        # The org turns personal projects off.
        r = api.put(f"{base}/settings", org.owner, json={"projects": {"allow_personal": False}})
        assert r.status_code == 200, r.text
        refused = []
        r = api.post(f"{base}/projects", alice, json={"name": "again", "visibility": "personal"})
        refused.append(r)
        refused.append(api.post(f"{base}/deployments", alice, json={**dep, "name": "more"}))
        refused.append(org.submit(alice, "mine-train"))
        for r in refused:
            assert (r.status_code, r.json()["error"]) == (403, "personal_projects_disabled")
            assert "projects.allow_personal" in r.json()["detail"]
        # Existing ones stay: admins see them (and may still make one).
        assert "mine" in [p["name"] for p in api.get(f"{base}/projects", admin).json()["items"]]
        r = api.post(f"{base}/projects", admin, json={"name": "adm", "visibility": "personal"})
        assert r.status_code == 201, r.text
        # Shared with the org again, Alice's project runs.
        r = api.patch(f"{base}/projects/mine", alice, json={"visibility": "org"})
        assert r.status_code == 200, r.text
        assert org.submit(alice, "mine-train").status_code == 201
        assert "mine" in [p["name"] for p in api.get(f"{base}/projects", bob).json()["items"]]
