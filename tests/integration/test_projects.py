"""Projects: groups of deployments, on both backends, with the in-memory Prefect fake.

Covers the API (create/list/show/patch/delete, names, Git URLs, permissions, tenancy),
deployments registered into projects (and into `default` without one), deletion refused
while a deployment's jobs hold slots, the CLI round trip, and migration 0019's backfill.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from api.app import create_app
from api.cli.main import app as cli_app
from flows.dispatch.dispatcher import Dispatcher
from orgs.db import Database
from orgs.migrate import upgrade
from tests.integration.test_jobs_support import (
    FakePrefect,
    OrgSetup,
    jobs_app,
    settings_with,
    setup_org,
)
from tests.prefect_server import REPO_ROOT
from tests.support import ApiClient, serve_in_thread

pytestmark = pytest.mark.timeout(120)

TRAIN = "flows/library/train.py:train"


@pytest.fixture
def world(database: Database) -> Iterator[tuple[ApiClient, OrgSetup, FakePrefect]]:
    fake = FakePrefect()
    with jobs_app(database, fake) as api:
        yield api, setup_org(api, f"pr{uuid.uuid4().hex[:6]}"), fake


def _deploy(org: OrgSetup, name: str, **extra: Any) -> dict[str, Any]:
    # No parameter schema: the tests need no flow import (any parameters are accepted).
    return org.deploy(name, parameter_schema={}, **extra)


def test_create_list_show_patch_delete(world: tuple[ApiClient, OrgSetup, FakePrefect]) -> None:
    api, org, _fake = world
    base = f"/orgs/{org.slug}/projects"
    # An org that never heard of projects lists none, then `default` after a deploy.
    assert api.get(base, org.owner).json() == {"items": [], "total": 0}

    body = {"name": "vision", "git_url": "git@github.com:team/vision.git", "description": "CV"}
    r = api.post(base, org.owner, json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["name"], created["git_url"], created["deployment_count"]) == (
        "vision",
        "git@github.com:team/vision.git",
        0,
    )
    dup = api.post(base, org.owner, json={"name": "vision"})
    assert (dup.status_code, dup.json()["error"]) == (409, "project_exists")

    for bad in ("Vision", "-x", "a b", "x" * 64, "", "ab\u202ecd"):
        r = api.post(base, org.owner, json={"name": bad})
        assert r.status_code == 422, (bad, r.text)
        assert {"error", "detail"} <= set(r.json())
    for url in (
        "https://github.com/team/repo.git",
        "ssh://git@example.com:2222/team/repo.git",
        "git@gitlab.example.com:group/sub/repo.git",
    ):
        r = api.patch(f"{base}/vision", org.owner, json={"git_url": url})
        assert (r.status_code, r.json()["git_url"]) == (200, url)
    for url in (
        "http://github.com/team/repo",
        "ftp://x/y",
        "file:///etc/passwd",
        "github.com/team/repo",
        "https://user:token@github.com/team/repo.git",
        "git@host:/abs",
        "https://host/repo with space",
    ):
        r = api.patch(f"{base}/vision", org.owner, json={"git_url": url})
        assert (r.status_code, r.json().get("field")) == (422, "git_url"), (url, r.text)
        assert "token" not in r.json()["detail"] or "user:token" not in r.json()["detail"]
    r = api.patch(f"{base}/vision", org.owner, json={"description": "Computer vision"})
    assert r.json()["description"] == "Computer vision"
    assert r.json()["git_url"] == "git@gitlab.example.com:group/sub/repo.git"  # untouched
    r = api.patch(f"{base}/vision", org.owner, json={"git_url": ""})
    assert r.json()["git_url"] is None

    shown = api.get(f"{base}/vision", org.owner).json()
    assert shown["deployments"] == [] and shown["description"] == "Computer vision"
    assert [p["name"] for p in api.get(base, org.owner).json()["items"]] == ["vision"]
    assert api.delete(f"{base}/vision", org.owner).status_code == 204
    missing = api.get(f"{base}/vision", org.owner)
    assert (missing.status_code, missing.json()["error"]) == (404, "project_not_found")


def test_deployments_in_projects(world: tuple[ApiClient, OrgSetup, FakePrefect]) -> None:
    api, org, fake = world
    base = f"/orgs/{org.slug}"
    assert api.post(f"{base}/projects", org.owner, json={"name": "nlp"}).status_code == 201

    plain = _deploy(org, "plain")
    assert plain["project"] == "default"  # made on first use
    in_nlp = _deploy(org, "tagger", project="nlp")
    assert in_nlp["project"] == "nlp"
    # Registering again without a project keeps it where it is.
    assert _deploy(org, "tagger")["project"] == "nlp"
    unknown = api.post(
        f"{base}/deployments",
        org.owner,
        json={"name": "x", "entrypoint": TRAIN, "project": "nope"},
    )
    assert (unknown.status_code, unknown.json()["field"]) == (422, "project")
    assert "nope" in unknown.json()["detail"]

    listed = api.get(f"{base}/deployments", org.owner, params={"project": "nlp"}).json()
    assert [d["name"] for d in listed["items"]] == ["tagger"]
    everything = api.get(f"{base}/deployments", org.owner).json()["items"]
    assert {d["name"]: d["project"] for d in everything} == {"plain": "default", "tagger": "nlp"}
    assert api.get(f"{base}/deployments/tagger", org.owner).json()["project"] == "nlp"
    r = api.get(f"{base}/deployments", org.owner, params={"project": "nope"})
    assert r.status_code == 404
    projects = {p["name"]: p for p in api.get(f"{base}/projects", org.owner).json()["items"]}
    assert projects["default"]["deployment_count"] == 1
    assert projects["nlp"]["deployment_count"] == 1
    assert projects["default"]["created_by"] is None  # nobody's own: admins manage it
    shown = api.get(f"{base}/projects/nlp", org.owner).json()
    assert [d["name"] for d in shown["deployments"]] == ["tagger"]

    # An active job blocks the deletion, named in the answer; nothing is deleted.
    job = org.submit(org.owner, "tagger").json()
    assert job["state"] == "scheduled", job
    r = api.delete(f"{base}/projects/nlp", org.owner)
    assert (r.status_code, r.json()["error"]) == (409, "project_in_use")
    assert "'tagger' (1)" in r.json()["detail"]
    assert api.get(f"{base}/deployments/tagger", org.owner).status_code == 200

    # The run completes; the dispatcher observes it and the slot is released.
    fake.finish(uuid.UUID(job["flow_run_id"]))
    Dispatcher(api.db, fake, settings_with()).run_once()  # type: ignore[arg-type]
    assert api.get(f"{base}/jobs/{job['id']}", org.owner).json()["state"] == "completed"
    r = api.delete(f"{base}/projects/nlp", org.owner)
    assert r.status_code == 204, r.text
    assert api.get(f"{base}/deployments/tagger", org.owner).status_code == 404
    assert [d["name"] for d in api.get(f"{base}/deployments", org.owner).json()["items"]] == [
        "plain"
    ]
    audit = api.get(f"{base}/audit", org.owner).json()["items"]
    actions = [a["action"] for a in audit]
    assert "project.deleted" in actions and "deployment.deleted" in actions


def test_member_and_admin_permissions(world: tuple[ApiClient, OrgSetup, FakePrefect]) -> None:
    api, org, _fake = world
    base = f"/orgs/{org.slug}/projects"
    alice, bob, admin = org.add_member(), org.add_member(), org.add_member("admin")
    assert api.post(base, alice, json={"name": "alices"}).status_code == 201
    # Bob may deploy into it, but may not change or delete it.
    assert _deploy(org, "bobs", who=bob, project="alices")["project"] == "alices"
    r = api.patch(f"{base}/alices", bob, json={"description": "mine now"})
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    assert api.delete(f"{base}/alices", bob).status_code == 403
    # Alice owns the project but not Bob's deployment in it: deleting is refused whole.
    r = api.delete(f"{base}/alices", alice)
    assert r.status_code == 403
    assert api.get(f"{base}/alices", alice).json()["deployment_count"] == 1
    assert api.patch(f"{base}/alices", alice, json={"description": "ok"}).status_code == 200
    # `default` is nobody's: members cannot change it, admins can.
    _deploy(org, "plain", who=alice)
    assert api.patch(f"{base}/default", alice, json={"description": "x"}).status_code == 403
    assert api.patch(f"{base}/default", admin, json={"description": "x"}).status_code == 200
    # Naming a new project `default` does not make it yours (it exists already: 409).
    assert api.post(base, alice, json={"name": "default"}).status_code == 409
    # Admins manage everyone's.
    assert api.delete(f"{base}/alices", admin).status_code == 204


def test_cross_org_is_not_found(world: tuple[ApiClient, OrgSetup, FakePrefect]) -> None:
    api, org, _fake = world
    assert api.post(f"/orgs/{org.slug}/projects", org.owner, json={"name": "secret"}).status_code
    other = setup_org(api, f"px{uuid.uuid4().hex[:6]}")
    for method, path, body in (
        ("GET", f"/orgs/{org.slug}/projects", None),
        ("GET", f"/orgs/{org.slug}/projects/secret", None),
        ("PATCH", f"/orgs/{org.slug}/projects/secret", {"description": "x"}),
        ("DELETE", f"/orgs/{org.slug}/projects/secret", None),
    ):
        r = api.client.request(method, "/api/v1" + path, headers=other.owner.headers, json=body)
        assert r.status_code == 404, (method, path, r.text)
    # Their own org has no such project, and cannot deploy into ours.
    assert api.get(f"/orgs/{other.slug}/projects/secret", other.owner).status_code == 404
    r = api.post(
        f"/orgs/{other.slug}/deployments",
        other.owner,
        json={"name": "x", "entrypoint": TRAIN, "project": "secret"},
    )
    assert (r.status_code, r.json()["field"]) == (422, "project")


def test_cli_round_trip(sqlite_database: Database, tmp_path: Path) -> None:
    fake = FakePrefect()
    with jobs_app(sqlite_database, fake) as api:
        org = setup_org(api, "cliproj")
    server_app = create_app(None, sqlite_database, fake)  # type: ignore[arg-type]
    runner = CliRunner()
    with serve_in_thread(server_app) as url:
        env = {
            "CSHARE_API_URL": url.removesuffix("/api/v1"),
            "CSHARE_TOKEN": org.owner.token,
            "CSHARE_CONFIG": str(tmp_path / "cfg.toml"),
            "CSHARE_ORG": "cliproj",
            "COLUMNS": "240",
        }

        def cli(*args: str, code: int = 0) -> Any:
            result = runner.invoke(cli_app, list(args), env=env)
            assert result.exit_code == code, (args, result.stdout, result.stderr)
            return result

        created = json.loads(
            cli(
                "project", "create", "web", "--git", "https://git.example.com/t/web.git", "--json"
            ).stdout
        )
        assert created["git_url"] == "https://git.example.com/t/web.git"
        err = cli("project", "create", "bad", "--git", "http://x/y", code=1).stderr
        assert "Git URL" in err
        cli("project", "use", "web")
        assert 'project = "cliproj/web"' in (tmp_path / "cfg.toml").read_text()
        deployed = json.loads(
            cli("deploy", "flows/library/train.py:train", "--path", str(REPO_ROOT), "--json").stdout
        )
        assert deployed["items"][0]["project"] == "web"
        other = json.loads(
            cli(
                "deploy",
                "flows/library/train.py:train",
                "--name",
                "train2",
                "--project",
                "default",
                "--path",
                str(REPO_ROOT),
                "--json",
            ).stdout
        )
        assert other["items"][0]["project"] == "default"
        listed = cli("project", "list").stdout
        assert "* " in listed.split("web")[0].splitlines()[-1] or "*" in listed
        shown = json.loads(cli("project", "show", "web", "--json").stdout)
        assert [d["name"] for d in shown["deployments"]] == ["train"]
        cli("project", "update", "web", "--description", "The website")
        cli("project", "delete", "web", "--yes")
        assert "project" not in (tmp_path / "cfg.toml").read_text()
        err = cli("project", "show", "web", code=1).stderr
        assert "web" in err


def _insert_old_rows(db: Database) -> dict[str, str]:
    """An org with two deployments and an empty org, written as migration 0008 knew them."""
    ids = {k: uuid.uuid4().hex for k in ("user", "org", "empty", "d1", "d2")}
    now = "2026-01-01 00:00:00.000000"
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, email, name, password_hash, created_at, failed_logins) "
                "VALUES (:id, 'old@example.test', 'old', 'x', :now, 0)"
            ),
            {"id": ids["user"], "now": now},
        )
        for key, slug in (("org", "oldorg"), ("empty", "emptyorg")):
            conn.execute(
                text(
                    "INSERT INTO organizations (id, slug, name, description, settings, "
                    "settings_version, created_at) VALUES (:id, :slug, :slug, '', '{}', 1, :now)"
                ),
                {"id": ids[key], "slug": slug, "now": now},
            )
        for key in ("d1", "d2"):
            conn.execute(
                text(
                    "INSERT INTO deployments (id, org_id, name, flow_name, entrypoint, "
                    "machine_type, description, tags, parameters, parameter_schema, "
                    "job_variables, created_by, created_at, updated_at) VALUES (:id, :org, "
                    ":name, 'train', :ep, 'cpu', '', '[]', '{}', '{}', '{}', :user, :now, :now)"
                ),
                {
                    "id": ids[key],
                    "org": ids["org"],
                    "name": key,
                    "ep": TRAIN,
                    "user": ids["user"],
                    "now": now,
                },
            )
    return ids


def test_migration_backfills_default_project(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(db.engine, "0008")
        ids = _insert_old_rows(db)
        upgrade(db.engine)
        with db.engine.connect() as conn:
            projects = conn.execute(
                text("SELECT id, org_id, name, created_by FROM projects ORDER BY org_id")
            ).all()
            deps = conn.execute(text("SELECT name, project_id FROM deployments")).all()
            fks = conn.execute(text("PRAGMA foreign_key_list(deployments)")).all()
        assert sorted((p.org_id, p.name, p.created_by) for p in projects) == sorted(
            [(ids["org"], "default", None), (ids["empty"], "default", None)]
        )
        default_of_org = next(p.id for p in projects if p.org_id == ids["org"])
        assert sorted(deps) == [("d1", default_of_org), ("d2", default_of_org)]
        assert any(
            fk._mapping["table"] == "projects" and fk._mapping["from"] == "project_id" for fk in fks
        )
    finally:
        db.dispose()
