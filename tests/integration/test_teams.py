"""Teams on both backends: admins create, rename and delete teams and choose their
members (org members only); members see the teams they are in; leaving the organization
leaves its teams; every change audited; the CLI round trip."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from api.app import create_app
from api.cli.main import app as cli_app
from orgs.db import Database
from orgs.models import AuditEvent, TeamMember
from tests.integration.test_jobs_support import FakePrefect, OrgSetup, jobs_app, setup_org
from tests.support import ApiClient, serve_in_thread

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def world(database: Database) -> Iterator[tuple[ApiClient, OrgSetup]]:
    with jobs_app(database, FakePrefect()) as api:
        yield api, setup_org(api, f"tm{uuid.uuid4().hex[:6]}")


def test_admins_manage_teams_members_see_their_own(world: tuple[ApiClient, OrgSetup]) -> None:
    api, org = world
    base = f"/orgs/{org.slug}/teams"
    admin, alice, bob = org.add_member("admin"), org.add_member(), org.add_member()
    outsider = api.signup()

    r = api.post(base, admin, json={"name": "vision", "description": "CV people"})
    assert r.status_code == 201, r.text
    assert (r.json()["name"], r.json()["members"]) == ("vision", [])
    assert api.post(base, org.owner, json={"name": "vision"}).json()["error"] == "team_exists"
    for bad in ("Vision", "-x", "a b", "x" * 64, ""):
        r = api.post(base, org.owner, json={"name": bad})
        assert r.status_code == 422, (bad, r.text)
        assert {"error", "detail"} <= set(r.json())
    assert (
        api.post(base, org.owner, json={"name": "nlp", "max_concurrent_jobs": -1}).status_code
        == 422
    )
    r = api.post(base, alice, json={"name": "mine"})
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    assert api.post(base, org.owner, json={"name": "nlp"}).status_code == 201

    # Members only: an outsider (or an unknown name) is refused by name.
    r = api.post(f"{base}/vision/members", admin, json={"user": outsider.name})
    assert (r.status_code, r.json()["error"]) == (422, "not_a_member")
    r = api.post(f"{base}/vision/members", admin, json={"user": alice.name})
    assert r.status_code == 201, r.text
    assert [m["name"] for m in r.json()["members"]] == [alice.name]
    r = api.post(f"{base}/vision/members", admin, json={"user": alice.id})  # twice: no change
    assert [m["name"] for m in r.json()["members"]] == [alice.name]
    assert api.post(f"{base}/vision/members", alice, json={"user": bob.name}).status_code == 403

    # Admins list every team; members the ones they are in; others get 404 for the rest.
    assert [t["name"] for t in api.get(base, admin).json()["items"]] == ["nlp", "vision"]
    assert [t["name"] for t in api.get(base, alice).json()["items"]] == ["vision"]
    assert api.get(base, bob).json()["items"] == []
    assert api.get(f"{base}/vision", alice).json()["member_count"] == 1
    assert api.get(f"{base}/vision", bob).status_code == 404
    assert api.get(f"{base}/nope", org.owner).json()["error"] == "team_not_found"
    assert api.get(base, outsider).status_code == 404

    # Rename and limits; a clash is 409.
    r = api.patch(f"{base}/vision", admin, json={"name": "cv", "max_concurrent_jobs": 3})
    assert (r.status_code, r.json()["name"], r.json()["max_concurrent_jobs"]) == (200, "cv", 3)
    assert api.patch(f"{base}/cv", admin, json={"name": "nlp"}).status_code == 409
    r = api.patch(f"{base}/cv", admin, json={"machine_types": ["gpu", "gpu"]})
    assert r.json()["machine_types"] == ["gpu"]
    assert (
        api.patch(f"{base}/cv", admin, json={"max_concurrent_jobs": None}).json()[
            "max_concurrent_jobs"
        ]
        is None
    )

    r = api.delete(f"{base}/cv/members/{bob.name}", admin)
    assert (r.status_code, r.json()["error"]) == (404, "team_member_not_found")
    assert api.delete(f"{base}/cv/members/{alice.name}", admin).status_code == 204
    assert api.get(f"{base}/cv", org.owner).json()["members"] == []
    assert api.delete(f"{base}/cv", alice).status_code == 403
    assert api.delete(f"{base}/cv", admin).status_code == 204
    assert api.get(f"{base}/cv", org.owner).status_code == 404

    with api.db.session(write=False) as s:
        actions = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.action.like("team.%"))
            .order_by(AuditEvent.id)
        ).all()
    assert actions[:2] == ["team.created", "team.created"]
    for action in ("team.member_added", "team.updated", "team.member_removed", "team.deleted"):
        assert action in actions


def test_leaving_the_org_leaves_its_teams(world: tuple[ApiClient, OrgSetup]) -> None:
    api, org = world
    base = f"/orgs/{org.slug}/teams"
    alice = org.add_member()
    assert api.post(base, org.owner, json={"name": "ops"}).status_code == 201
    assert api.post(f"{base}/ops/members", org.owner, json={"user": alice.name}).status_code == 201
    r = api.delete(f"/orgs/{org.slug}/members/{alice.id}", org.owner)
    assert r.status_code == 204, r.text
    assert api.get(f"{base}/ops", org.owner).json()["members"] == []
    with api.db.session(write=False) as s:
        left = s.scalars(select(TeamMember).where(TeamMember.user_id == uuid.UUID(alice.id)))
        assert left.all() == []


def test_cli_round_trip(sqlite_database: Database, tmp_path: Path) -> None:
    fake = FakePrefect()
    with jobs_app(sqlite_database, fake) as api:
        org = setup_org(api, f"clitm{uuid.uuid4().hex[:4]}")
        alice = org.add_member()
    server_app = create_app(None, sqlite_database, fake)  # type: ignore[arg-type]
    runner = CliRunner()
    with serve_in_thread(server_app) as url:
        env = {
            "CSHARE_API_URL": url.removesuffix("/api/v1"),
            "CSHARE_TOKEN": org.owner.token,
            "CSHARE_CONFIG": str(tmp_path / "cfg.toml"),
            "CSHARE_ORG": org.slug,
            "COLUMNS": "240",
        }

        def cli(*args: str, code: int = 0) -> Any:
            result = runner.invoke(cli_app, list(args), env=env)
            assert result.exit_code == code, (args, result.stdout, result.stderr)
            return result

        made = json.loads(
            cli(
                "team",
                "create",
                "vision",
                "--max-jobs",
                "2",
                "--machine-types",
                "cpu,gpu",
                "--json",
            ).stdout
        )
        assert (made["max_concurrent_jobs"], made["machine_types"]) == (2, ["cpu", "gpu"])
        cli("team", "add", "vision", alice.name)
        assert alice.name in cli("team", "show", "vision").stdout
        listed = cli("team", "list").stdout
        assert "vision" in listed and "2 jobs" in listed
        assert "not a member" in cli("team", "add", "vision", "nobody-here", code=1).stderr
        cli("team", "update", "vision", "--name", "cv", "--max-jobs", "-1")
        shown = json.loads(cli("team", "show", "cv", "--json").stdout)
        assert shown["max_concurrent_jobs"] is None
        made = json.loads(
            cli(
                "project", "create", "secret", "--visibility", "teams", "--team", "cv", "--json"
            ).stdout
        )
        assert (made["visibility"], made["teams"]) == ("teams", ["cv"])
        assert "teams (cv)" in cli("project", "show", "secret").stdout
        cli("project", "update", "secret", "--visibility", "org")
        assert "org" in cli("project", "list").stdout
        err = cli("project", "create", "x2", "--visibility", "teams", code=1).stderr
        assert "at least one team" in err
        cli("team", "remove", "cv", alice.name)
        cli("team", "delete", "cv", "--yes")
        assert "No teams" in cli("team", "list").stdout


def test_restricted_dataset_shared_with_a_team(world: tuple[ApiClient, OrgSetup]) -> None:
    api, org = world
    base = f"/orgs/{org.slug}"
    alice, bob = org.add_member(), org.add_member()
    assert api.post(f"{base}/teams", org.owner, json={"name": "data"}).status_code == 201
    assert (
        api.post(f"{base}/teams/data/members", org.owner, json={"user": alice.name}).status_code
        == 201
    )
    r = api.post(f"{base}/datasets", org.owner, json={"name": "corpus", "visibility": "restricted"})
    assert r.status_code == 201, r.text
    assert api.get(f"{base}/datasets/corpus", alice).status_code == 404
    r = api.put(f"{base}/datasets/corpus/access", org.owner, json={"teams": ["data"]})
    assert (r.status_code, r.json()["teams"]) == (200, ["data"]), r.text
    assert (
        api.put(f"{base}/datasets/corpus/access", org.owner, json={"teams": ["nope"]}).status_code
        == 422
    )
    assert api.get(f"{base}/datasets/corpus", alice).status_code == 200
    assert "corpus" in [d["name"] for d in api.get(f"{base}/datasets", alice).json()["items"]]
    assert api.get(f"{base}/datasets/corpus", bob).status_code == 404
    assert "corpus" not in [d["name"] for d in api.get(f"{base}/datasets", bob).json()["items"]]
    # Out of the team: out of the dataset.
    assert api.delete(f"{base}/teams/data/members/{alice.name}", org.owner).status_code == 204
    assert api.get(f"{base}/datasets/corpus", alice).status_code == 404
