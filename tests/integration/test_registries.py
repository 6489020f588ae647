"""Org registries on SQLite and PostgreSQL: admins only, the password never comes back
out (API, audit, list), stored sealed as an org secret, the most specific prefix wins,
bad hosts are 422, other organizations see 404; and the job-token-only login route."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flows import ledger
from flows.models import Job
from orgs import registries
from orgs.models import AuditEvent, Organization
from orgs.secrets import OrgSecret
from policies.errors import Invalid
from policies.job_states import JobEvent
from tests.integration.test_datasets import World, as_job, job_token, make_job, world
from tests.support import PREFIX, ApiClient, Person

__all__ = ["world"]  # the datasets' world fixture, used by name


def _password() -> str:
    return f"pw-{uuid.uuid4().hex}"


class Org:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.owner = api.signup()
        self.admin = api.signup()
        self.member = api.signup()
        self.slug = api.create_org(self.owner)
        api.add_member(self.slug, self.owner, self.admin, "admin")
        api.add_member(self.slug, self.owner, self.member, "member")
        with api.db.session() as s:
            self.id = s.scalars(select(Organization.id).where(Organization.slug == self.slug)).one()

    def add(
        self, registry: str, password: str, who: Person | None = None, **kw: Any
    ) -> httpx.Response:
        body = {"registry": registry, "username": kw.get("username", "robot"), "password": password}
        return self.api.post(f"/orgs/{self.slug}/registries", who or self.admin, json=body)

    def listing(self, who: Person | None = None) -> httpx.Response:
        return self.api.get(f"/orgs/{self.slug}/registries", who or self.admin)


@pytest.fixture
def org(api: ApiClient) -> Iterator[Org]:
    yield Org(api)


def test_admins_add_list_and_remove_and_the_password_never_comes_back(org: Org) -> None:
    password = _password()
    r = org.add("MyACR.azurecr.io/Team/", password)
    assert r.status_code == 201, r.text
    assert r.json()["registry"] == "myacr.azurecr.io/team"
    assert password not in r.text
    # Again: the login is replaced (200), still one registry.
    again = org.add("myacr.azurecr.io/team", password + "2", username="other")
    assert again.status_code == 200, again.text
    listed = org.listing()
    assert listed.status_code == 200
    assert [(x["registry"], x["username"]) for x in listed.json()] == [
        ("myacr.azurecr.io/team", "other")
    ]
    assert password not in listed.text
    with org.api.db.session() as s:
        secret = s.scalars(
            select(OrgSecret).where(OrgSecret.org_id == org.id, OrgSecret.name.like("REGISTRY_%"))
        ).one()
        assert password not in secret.ciphertext  # sealed (Fernet), not stored as given
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.org_id == org.id)))
    assert {"registry.added", "registry.updated"} <= {e.action for e in events}
    audit_text = " ".join(f"{e.before} {e.after}" for e in events)
    assert password not in audit_text
    # Removed by prefix (with its slash): the secret goes with it.
    gone = org.api.delete(f"/orgs/{org.slug}/registries/myacr.azurecr.io/team", org.admin)
    assert gone.status_code == 204, gone.text
    assert org.listing().json() == []
    with org.api.db.session() as s:
        assert not s.scalars(
            select(OrgSecret).where(OrgSecret.org_id == org.id, OrgSecret.name.like("REGISTRY_%"))
        ).all()
    missing = org.api.delete(f"/orgs/{org.slug}/registries/myacr.azurecr.io/team", org.admin)
    assert missing.status_code == 404
    assert missing.json()["error"] == "registry_not_found"


def test_members_are_refused_and_other_organizations_see_nothing(org: Org, api: ApiClient) -> None:
    assert org.add("registry.example.com", _password()).status_code == 201
    refused = org.add("other.example.com", _password(), who=org.member)
    assert refused.status_code == 403
    assert "registries" in refused.json()["detail"]
    assert org.listing(org.member).status_code == 403
    stranger = api.signup()
    api.create_org(stranger)
    assert org.listing(stranger).status_code == 404
    assert org.add("x.example.com", _password(), who=stranger).status_code == 404
    reg_id = org.listing().json()[0]["id"]
    assert api.delete(f"/orgs/{org.slug}/registries/{reg_id}", stranger).status_code == 404
    assert api.delete(f"/orgs/{org.slug}/registries/{reg_id}", org.member).status_code == 403
    assert len(org.listing().json()) == 1


@pytest.mark.parametrize(
    "registry",
    [
        "",
        "not a host",
        "http://",
        "bad_host!/x",
        "example.com:99999",
        "example.com/UP PER",
        "a" * 400,
    ],
)
def test_a_bad_registry_host_is_422_naming_it(org: Org, registry: str) -> None:
    r = org.add(registry, _password())
    assert r.status_code == 422, r.text
    assert r.json()["error"] in ("invalid_registry", "invalid", "validation_error"), r.json()
    assert org.listing().json() == []


def test_an_empty_password_is_422_and_not_stored(org: Org) -> None:
    r = org.add("registry.example.com", "")
    assert r.status_code == 422
    assert org.listing().json() == []


def test_the_most_specific_prefix_wins(org: Org) -> None:
    for prefix, user in (
        ("myacr.azurecr.io", "wide"),
        ("myacr.azurecr.io/team", "team"),
        ("docker.io", "hub"),
        ("127.0.0.1:5000/team/tool", "exact"),
    ):
        assert org.add(prefix, f"pw-{user}", username=user).status_code == 201
    with org.api.db.session() as s:

        def who(image: str) -> str | None:
            found = registries.credential_for(s, org.id, image)
            return found.username if found else None

        assert who("myacr.azurecr.io/team/tool:1") == "team"
        assert who("myacr.azurecr.io/teammate/tool:1") == "wide"  # not a path prefix
        assert who("myacr.azurecr.io/other/tool") == "wide"
        assert who("alpine") == "hub"  # docker.io/library/alpine
        assert who("index.docker.io/library/alpine:3") == "hub"
        assert who("127.0.0.1:5000/team/tool:1") == "exact"
        assert who("127.0.0.1:5000/team/toolbox:1") is None
        assert who("ghcr.io/x/y") is None
        found = registries.credential_for(
            s, org.id, "myacr.azurecr.io/team/tool@sha256:" + "a" * 64
        )
        assert found is not None and found.password == "pw-team"
        assert found.registry == "myacr.azurecr.io"


@pytest.mark.parametrize(
    ("ref", "path"),
    [
        ("alpine", "docker.io/library/alpine"),
        ("alpine:3.19", "docker.io/library/alpine"),
        ("team/tool:1", "docker.io/team/tool"),
        ("localhost:5000/tool", "localhost:5000/tool"),
        ("127.0.0.1:5000/team/tool:1", "127.0.0.1:5000/team/tool"),
        ("ghcr.io/o/r@sha256:" + "b" * 64, "ghcr.io/o/r"),
    ],
)
def test_image_references_are_read_as_docker_reads_them(ref: str, path: str) -> None:
    assert registries.image_path(ref)[1] == path


@pytest.mark.parametrize("ref", ["", "UPPER/Case", "a b", "x:", "tool@sha256:zz", " alpine"])
def test_bad_image_references_are_refused(ref: str) -> None:
    with pytest.raises(Invalid):
        registries.image_path(ref)


def test_the_registry_login_route_refuses_member_tokens(org: Org) -> None:
    """Only a job's own token gets a login (for its own image): a member, even the
    owner, gets 403; the route exists for every job id they could name."""
    r = org.api.get(f"/orgs/{org.slug}/jobs/{uuid.uuid4()}/registry-auth", org.owner)
    assert r.status_code in (403, 404), r.text
    assert "password" not in r.text


# ------------------------------------------------------------ the job's login


def _container_job(api: ApiClient, w: World, image: str | None) -> Job:
    job = make_job(api.db, w.slug, w.alice.id, state="running")
    if image is not None:
        with api.db.transaction() as s:
            fresh = s.get(Job, job.id)
            assert fresh is not None
            ledger.record_image(s, fresh, {"ref": image, "digest": None})
    return job


def test_a_job_token_gets_the_login_for_its_own_image_only(api: ApiClient, world: World) -> None:
    w = world
    password = _password()
    body = {"registry": "127.0.0.1:5000/team", "username": "robot", "password": password}
    assert api.post(f"/orgs/{w.slug}/registries", w.owner, json=body).status_code == 201
    private = _container_job(api, w, "127.0.0.1:5000/team/tool:1")
    public = _container_job(api, w, "ghcr.io/someone/tool:2")
    flow = _container_job(api, w, None)
    token = job_token(api.db, private)

    def auth(job: Job, tok: str) -> httpx.Response:
        r: httpx.Response = api.client.get(
            f"{PREFIX}/orgs/{w.slug}/jobs/{job.id}/registry-auth", headers=as_job(tok)
        )
        return r

    r = auth(private, token)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "image": "127.0.0.1:5000/team/tool:1",
        "registry": "127.0.0.1:5000",
        "anonymous": False,
        "username": "robot",
        "password": password,
    }
    # Another job's login is not this token's to read.
    assert auth(public, token).status_code in (403, 404)
    r = auth(public, job_token(api.db, public))
    assert r.status_code == 200 and r.json()["anonymous"] is True and password not in r.text
    r = auth(flow, job_token(api.db, flow))
    assert r.status_code == 409 and r.json()["error"] == "not_a_container_job", r.text
    # Members (the owner included) never get it: only the machine running the job.
    for who in (w.owner, w.alice):
        r = api.get(f"/orgs/{w.slug}/jobs/{private.id}/registry-auth", who)
        assert r.status_code == 403 and r.json()["error"] == "registry_auth_job_only", r.text
        assert password not in r.text
    # The job's end revokes its token, and with it the login.
    with api.db.transaction() as s:
        fresh = s.get(Job, private.id)
        assert fresh is not None
        ledger.apply(s, fresh, JobEvent.observe_completed, actor=None)
    assert auth(private, token).status_code == 401
