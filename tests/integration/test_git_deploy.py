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
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orgs.db import Database
from tests.git_servers import GitDaemon, GitHttp, GitSshd, free_port
from tests.integration.test_code_bundles import RecordingPrefect, _token, api_get
from tests.integration.test_jobs_support import OrgSetup, jobs_app, settings_with, setup_org
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


def test_cli_deploy_git_and_prefect_yaml_git_clone(
    sqlite_database: Database,
    git_daemon: GitDaemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from api.app import create_app
    from api.cli.main import app as cli_app
    from tests.support import serve_in_thread

    repo = git_daemon.repo("yaml")
    first = repo.commit({"flows/hello.py": SOURCE.format(n=1)})
    url = git_daemon.url(repo)
    monkeypatch.setattr(sys, "path", list(sys.path))
    fake = RecordingPrefect()
    with jobs_app(sqlite_database, fake) as api:
        org = setup_org(api, f"gy{uuid.uuid4().hex[:6]}")
    settings = settings_with(git_host_allowlist="127.0.0.1/32")
    with serve_in_thread(create_app(settings, sqlite_database, fake)) as server:  # type: ignore[arg-type]
        env = {
            "CSHARE_API_URL": server.removesuffix("/api/v1"),
            "CSHARE_TOKEN": org.owner.token,
            "CSHARE_CONFIG": str(tmp_path / "cli.toml"),
            "CSHARE_ORG": org.slug,
            "COLUMNS": "240",
        }
        runner = CliRunner()
        empty = tmp_path / "empty"
        empty.mkdir()
        monkeypatch.chdir(empty)  # no checkout here: the entrypoint is the repository's

        done = runner.invoke(cli_app, ["deploy", FLOW, "--ref", "main"], env=env)
        assert done.exit_code != 0 and "--git" in done.stderr, done.stderr
        done = runner.invoke(
            cli_app, ["deploy", FLOW, "--name", "hello", "--git", url, "--ref", "main"], env=env
        )
        assert done.exit_code == 0, (done.stdout, done.stderr)
        assert f"commit {first[:12]} (pinned)" in done.stdout, done.stdout
        dep = api_get(server, org, "/deployments/hello")
        assert dep["entrypoint"] == FLOW and dep["code"]["commit"] == first
        done = runner.invoke(
            cli_app, ["deploy", FLOW, "--name", "hello", "--git", url, "--ref", "nope"], env=env
        )
        assert done.exit_code != 0 and "'nope'" in done.stderr, done.stderr
        assert api_get(server, org, "/deployments/hello")["code"]["commit"] == first

        # A prefect.yaml cloning a repository deploys from Git the same way.
        (empty / "prefect.yaml").write_text(
            "deployments:\n"
            "  - name: yhello\n"
            f"    entrypoint: {FLOW}\n"
            "    pull:\n"
            "      - prefect.deployments.steps.git_clone:\n"
            f"          repository: {url}\n"
            "          branch: main\n"
            "          access_token: '{{ prefect.blocks.secret.token }}'\n"
        )
        done = runner.invoke(cli_app, ["deploy", "prefect.yaml"], env=env)
        assert done.exit_code == 0, (done.stdout, done.stderr)
        assert "access_token" in done.stderr and "not used" in done.stderr, done.stderr
        ydep = api_get(server, org, "/deployments/yhello")
        assert ydep["code"] == {
            "kind": "git",
            "repository": url,
            "ref": "main",
            "commit": first,
            "track": False,
        }
        assert fake.upserts[-1]["pull_steps"] == [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $CSHARE_CODE_DIR }}"
                }
            }
        ]


def test_the_machine_lays_out_a_git_job_like_a_bundle(git_http: GitHttp, tmp_path: Path) -> None:
    """agents.code_cache.prepare_git: the commit checked out once (with the token) into
    the code cache, a fresh hard-link copy per job, the lineage report, removed after."""
    from agents import code_cache

    repo = git_http.repo("machine")
    commit = repo.commit({"flows/hello.py": SOURCE.format(n=1), "helper.py": "V = 1\n"})
    source = {
        "kind": "git",
        "repository": git_http.url(repo),
        "commit": commit,
        "credential": {"kind": "token", "user": git_http.user, "token": git_http.token},
    }
    cache = tmp_path / "code-cache"
    with code_cache.prepare_git(cache, tmp_path / "job1", source, 1 << 30) as one:
        assert not one.cached and one.files == 2
        assert (one.code_dir / "helper.py").read_text() == "V = 1\n"
        assert not (one.code_dir / ".git").exists()
        assert one.report() == {
            "kind": "git",
            "repository": source["repository"],
            "commit": commit,
            "fetch_ms": one.fetch_ms,
            "cached": False,
        }
        with code_cache.prepare_git(cache, tmp_path / "job2", source) as two:
            assert two.cached and two.code_dir != one.code_dir
            (two.code_dir / "scratch.txt").write_text("mine")  # the job's own directory
            assert not (one.code_dir / "scratch.txt").exists()
        assert not two.code_dir.exists()
    assert not one.code_dir.exists()
    assert git_http.token not in "".join(str(p) for p in cache.rglob("*"))
    wrong = {**source, "credential": {"kind": "token", "user": "x", "token": "wrong"}}
    other = {**wrong, "commit": "0" * 40}
    with (
        pytest.raises(code_cache.CodeFetchError, match=r"Git commit 0{40}"),
        code_cache.prepare_git(cache, tmp_path / "job3", other),
    ):
        pass


def test_private_repository_over_ssh_with_the_projects_deploy_key(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect],
    git_sshd: GitSshd,
    database: Database,
    tmp_path: Path,
) -> None:
    """Deploy with the project's generated key (pasted into the server's authorized
    keys), then the machine checks the commit out with the key its job token got."""
    from agents import code_cache

    api, org, _ = world
    repo = git_sshd.repo("keyed")
    commit = repo.commit({"helper.py": "V = 'ssh'\n"})
    url = git_sshd.url(repo)
    assert (
        api.post(f"/orgs/{org.slug}/projects", org.owner, json={"name": "keyed"}).status_code == 201
    )
    key = api.post(f"/orgs/{org.slug}/projects/keyed/deploy-key", org.owner, json={})
    assert key.status_code == 201, key.text
    body: dict[str, Any] = {"name": "hello", "entrypoint": FLOW, "project": "keyed"}
    body["git"] = {"repository": url, "ref": "main"}
    refused = api.post(f"/orgs/{org.slug}/deployments", org.owner, json=body)
    assert refused.status_code == 422 and refused.json()["field"] == "git", refused.text
    git_sshd.authorize(key.json()["public_key"])
    r = api.post(f"/orgs/{org.slug}/deployments", org.owner, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["code"]["commit"] == commit

    job = org.submit(org.owner, "hello").json()
    token = _token(database, job["id"])
    got = api.client.get(
        f"/api/v1/orgs/{org.slug}/jobs/{job['id']}/code",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert got.status_code == 200, got.text
    source = got.json()
    assert source["credential"]["kind"] == "ssh"
    with code_cache.prepare_git(tmp_path / "cache", tmp_path / "job", source) as prepared:
        assert (prepared.code_dir / "helper.py").read_text() == "V = 'ssh'\n"
    assert "PRIVATE KEY" not in "".join(
        p.read_text(errors="replace") for p in (tmp_path / "cache").rglob("*") if p.is_file()
    )
