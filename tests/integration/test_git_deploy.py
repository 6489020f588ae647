"""Deployments from Git through the API, on SQLite and PostgreSQL, against a real `git
daemon` and a real `git http-backend` behind basic auth (tests/git_servers.py), with the
in-memory Prefect fake.

Covers: the ref pinned to a commit at registration (Prefect's version, the bundle pull
step), jobs keeping the pinned commit when the branch moves, wrong refs and unreachable
URLs refused with a 422 naming them and the deployment unchanged, `track` re-resolving
at each submission (and a failed resolve failing the submission), rerun of the old
commit, and the job's code answer: the credential only for the job's own token.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from orgs.db import Database
from tests.git_servers import GitDaemon, GitHttp, free_port
from tests.integration.test_code_bundles import RecordingPrefect, _token
from tests.integration.test_jobs_support import OrgSetup, jobs_app, setup_org
from tests.support import ApiClient

pytestmark = pytest.mark.timeout(120)

FLOW = "flows/hello.py:hello"
SOURCE = "from prefect import flow\n\n@flow\ndef hello():\n    return {n}\n"


@pytest.fixture
def world(database: Database) -> Iterator[tuple[ApiClient, OrgSetup, RecordingPrefect]]:
    fake = RecordingPrefect()
    # The fixtures' servers listen on 127.0.0.1: an operator's allowlist lets them in.
    with jobs_app(database, fake, git_host_allowlist="127.0.0.1/32") as api:
        yield api, setup_org(api, f"gd{uuid.uuid4().hex[:6]}"), fake


def deploy(api: ApiClient, org: OrgSetup, git: dict[str, Any], name: str = "hello") -> Any:
    return api.post(
        f"/orgs/{org.slug}/deployments",
        org.owner,
        json={"name": name, "entrypoint": FLOW, "git": git},
    )


def code_of(api: ApiClient, org: OrgSetup, name: str = "hello") -> Any:
    r = api.get(f"/orgs/{org.slug}/deployments/{name}", org.owner)
    assert r.status_code == 200, r.text
    return r.json()["code"]


def test_pinned_commit_errors_track_and_rerun(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect],
    git_daemon: GitDaemon,
    database: Database,
) -> None:
    api, org, fake = world
    repo = git_daemon.repo("vision")
    first = repo.commit({"flows/hello.py": SOURCE.format(n=1)})
    url = git_daemon.url(repo)

    r = deploy(api, org, {"repository": url, "ref": "main"})
    assert r.status_code == 201, r.text
    assert r.json()["code"] == {
        "kind": "git",
        "repository": url,
        "ref": "main",
        "commit": first,
        "track": False,
    }
    upsert = fake.upserts[-1]
    assert upsert["version"] == first
    assert upsert["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CSHARE_CODE_DIR }}"}}
    ]
    old = org.submit(org.owner, "hello")
    assert old.status_code == 201, old.text
    assert old.json()["code"]["commit"] == first

    # A new commit changes nothing until the next deploy.
    second = repo.commit({"flows/hello.py": SOURCE.format(n=2)})
    assert org.submit(org.owner, "hello").json()["code"]["commit"] == first

    # Bad input: a 422 naming what is wrong; the deployment and Prefect unchanged.
    upserts = len(fake.upserts)
    r = deploy(api, org, {"repository": url, "ref": "nope"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "ref" and "'nope'" in r.json()["detail"]
    assert "main" in r.json()["detail"]  # the branches it has
    gone = f"git://127.0.0.1:{free_port()}/vision.git"
    r = deploy(api, org, {"repository": gone, "ref": "main"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "git" and gone in r.json()["detail"]
    r = deploy(api, org, {"repository": "", "ref": "main"})
    assert r.status_code == 422 and r.json()["field"] == "git.repository", r.text
    r = api.post(
        f"/orgs/{org.slug}/deployments",
        org.owner,
        json={
            "name": "hello",
            "entrypoint": FLOW,
            "git": {"repository": url, "ref": "main"},
            "code": {"kind": "bundle", "digest": "sha256:" + "0" * 64},
        },
    )
    assert r.status_code == 422 and r.json()["field"] == "git", r.text
    assert code_of(api, org)["commit"] == first
    assert len(fake.upserts) == upserts

    # Redeploy: the new commit. --track: each submission resolves the branch again.
    r = deploy(api, org, {"repository": url, "ref": "main", "track": True})
    assert r.status_code == 200, r.text
    assert r.json()["code"]["commit"] == second and r.json()["code"]["track"] is True
    third = repo.commit({"flows/hello.py": SOURCE.format(n=3)})
    tracked = org.submit(org.owner, "hello")
    assert tracked.status_code == 201, tracked.text
    assert tracked.json()["code"]["commit"] == third
    assert code_of(api, org)["commit"] == second  # the deployment keeps its own pin

    # Rerun: exactly the old job's commit, even with track (no resolve for a rerun).
    rerun = api.post(f"/orgs/{org.slug}/jobs/{old.json()['id']}/rerun", org.owner)
    assert rerun.status_code == 201, rerun.text
    assert rerun.json()["code"]["commit"] == first

    # The job's code: its own token gets the Git source (git:// needs no credential).
    token = _token(database, tracked.json()["id"])
    code_url = f"/orgs/{org.slug}/jobs/{tracked.json()['id']}/code"
    got = api.client.get("/api/v1" + code_url, headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200, got.text
    assert got.json() == {"kind": "git", "repository": url, "commit": third, "credential": None}
    other = _token(database, old.json()["id"])
    assert (
        api.client.get(
            "/api/v1" + code_url, headers={"Authorization": f"Bearer {other}"}
        ).status_code
        == 404
    )

    # A tracked branch that cannot be resolved fails the submission, creating nothing.
    jobs_before = api.get(f"/orgs/{org.slug}/jobs", org.owner).json()["total"]
    shutil.rmtree(repo.bare)
    r = org.submit(org.owner, "hello")
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "git" and url in r.json()["detail"]
    assert api.get(f"/orgs/{org.slug}/jobs", org.owner).json()["total"] == jobs_before


def test_private_repository_with_the_projects_token(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect],
    git_http: GitHttp,
    database: Database,
) -> None:
    api, org, _ = world
    repo = git_http.repo("private")
    commit = repo.commit({"flows/hello.py": SOURCE.format(n=1)})
    url = git_http.url(repo)
    r = api.post(f"/orgs/{org.slug}/projects", org.owner, json={"name": "vision"})
    assert r.status_code == 201, r.text
    body = {"name": "hello", "entrypoint": FLOW, "project": "vision"}

    r = api.post(
        f"/orgs/{org.slug}/deployments",
        org.owner,
        json={**body, "git": {"repository": url, "ref": "main"}},
    )
    assert r.status_code == 422, r.text  # no token yet: the server refuses us
    assert r.json()["field"] == "git" and url in r.json()["detail"]
    assert api.get(f"/orgs/{org.slug}/deployments/hello", org.owner).status_code == 404

    r = api.put(
        f"/orgs/{org.slug}/projects/vision/git-token",
        org.owner,
        json={"token": git_http.token, "user": git_http.user},
    )
    assert r.status_code == 200, r.text
    r = api.post(
        f"/orgs/{org.slug}/deployments",
        org.owner,
        json={**body, "git": {"repository": url, "ref": "main"}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["code"]["commit"] == commit and git_http.token not in r.text

    job = org.submit(org.owner, "hello").json()
    code_url = f"/orgs/{org.slug}/jobs/{job['id']}/code"
    token = _token(database, job["id"])
    got = api.client.get("/api/v1" + code_url, headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200, got.text
    assert got.json()["credential"] == {
        "kind": "token",
        "user": git_http.user,
        "token": git_http.token,
    }
    assert got.headers["cache-control"] == "no-store"
    # The job's owner sees the job's code but never the project's token.
    mine = api.get(code_url, org.owner)
    assert mine.status_code == 200 and mine.json()["credential"] is None
    assert git_http.token not in mine.text
