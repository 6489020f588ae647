"""`cshare deploy`, `cshare job ...` and `cshare schedule ...` against a live API (uvicorn)
whose Prefect is the in-memory fake: what the commands send and print."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api.app import create_app
from api.cli.jobs import parse_params, parse_sweep
from api.cli.main import app
from api.cli.output import UsageProblem
from orgs.db import Database
from tests.integration.test_jobs_support import FakePrefect, jobs_app, limits_doc, setup_org
from tests.prefect_server import REPO_ROOT
from tests.support import Person, serve_in_thread

pytestmark = pytest.mark.timeout(120)


def test_parse_params() -> None:
    assert parse_params(["a=3", "b=0.5", "c=true", "d=[1, 2]", "e=hello", 'f="7"', "g="]) == {
        "a": 3,
        "b": 0.5,
        "c": True,
        "d": [1, 2],
        "e": "hello",
        "f": "7",
        "g": "",
    }


def test_parse_sweep() -> None:
    assert parse_sweep(["x=1,2,3", "lr=0.1,0.01"]) == [
        {"x": 1, "lr": 0.1},
        {"x": 1, "lr": 0.01},
        {"x": 2, "lr": 0.1},
        {"x": 2, "lr": 0.01},
        {"x": 3, "lr": 0.1},
        {"x": 3, "lr": 0.01},
    ]
    assert parse_sweep(["s=[[1,2],[3]]", "n=a,true"]) == [
        {"s": [1, 2], "n": "a"},
        {"s": [1, 2], "n": True},
        {"s": [3], "n": "a"},
        {"s": [3], "n": True},
    ]
    assert parse_sweep(None) == [{}]
    for bad in (["x"], ["=1"], ["x=1", "x=2"], ["x=[]"]):
        with pytest.raises(UsageProblem):
            parse_sweep(bad)


class Cli:
    def __init__(self, url: str, person: Person, config: Path) -> None:
        self.env = {
            "CSHARE_API_URL": url,
            "CSHARE_TOKEN": person.token,
            "CSHARE_CONFIG": str(config),
            "CSHARE_ORG": None,
            "COLUMNS": "240",
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> Any:
        result = self.runner.invoke(app, list(args), env=self.env)
        assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def world(sqlite_database: Database, tmp_path: Path) -> Iterator[tuple[Cli, Cli, str, FakePrefect]]:
    fake = FakePrefect()
    with jobs_app(sqlite_database, fake) as api:
        org = setup_org(api, "clijobs", limits_doc(concurrent=1))
        alice = org.add_member()
    server_app = create_app(None, sqlite_database, fake)  # type: ignore[arg-type]
    with serve_in_thread(server_app) as url:
        base = url.removesuffix("/api/v1")
        yield (
            Cli(base, alice, tmp_path / "alice.toml"),
            Cli(base, org.owner, tmp_path / "owner.toml"),
            "clijobs",
            fake,
        )


def test_deploy_submit_follow_cancel(world: tuple[Cli, Cli, str, FakePrefect]) -> None:
    alice, owner, slug, fake = world
    deployed = alice.json("deploy", str(REPO_ROOT / "prefect.yaml"), "--org", slug)
    by_name = {d["name"]: d for d in deployed["items"]}
    assert set(by_name) == {"command", "etl", "train"}
    train = by_name["train"]
    assert train["entrypoint"] == "flows/library/train.py:train"
    assert train["parameters"] == {"epochs": 20, "learning_rate": 0.1}
    assert train["parameter_schema"]["properties"]["epochs"]["type"] == "integer"
    assert train["work_pool"] == f"{slug}-cpu" and train["prefect_name"] == f"train/{slug}.train"
    one = alice.json(
        "deploy",
        "flows/library/train.py:train",
        "--name",
        "train2",
        "--path",
        str(REPO_ROOT),
        "--org",
        slug,
    )
    assert one["items"][0]["path"] == str(REPO_ROOT)

    job = alice.json(
        "job", "submit", "train", "-p", "epochs=3", "-p", "learning_rate=0.2", "--org", slug
    )
    assert job["state"] == "scheduled" and job["parameters"] == {"epochs": 3, "learning_rate": 0.2}
    out = alice("job", "submit", "train", "--org", slug).stdout
    assert "held" in out and "position 1" in out
    out = alice("job", "submit", "train", "--explain", "--org", slug).stdout
    assert "Decision: hold (user_concurrency)" in out and "Queue position: 2" in out
    err = alice("job", "submit", "train", "-p", "epochs=ten", "--org", slug, code=1).stderr
    assert "parameters.epochs" in err

    listed = alice.json("job", "list", "--org", slug)
    assert [j["state"] for j in listed["items"]] == ["held", "scheduled"]
    shown = alice("job", "show", job["id"], "--org", slug).stdout
    assert "train" in shown and '"epochs": 3' in shown
    assert alice("job", "logs", job["id"], "--org", slug).stdout == ""
    cancelled = owner.json("job", "cancel", listed["items"][0]["id"], "--org", slug)
    assert cancelled["state"] == "cancelled"
    assert len(fake.runs) == 2


def test_submit_sweep_is_one_batch(world: tuple[Cli, Cli, str, FakePrefect]) -> None:
    alice, _owner, slug, fake = world
    alice("deploy", str(REPO_ROOT / "prefect.yaml"), "--name", "train", "--org", slug)
    args = ["job", "submit", "train", "-p", "epochs=3", "--sweep", "learning_rate=0.1,0.01"]
    args += ["--sweep", "seed=1,2", "--idempotency-key", "grid", "--org", slug]
    out = alice.json(*args)
    assert (out["created"], out["existing"], out["failed"]) == (4, 0, 0)
    points = [
        (i["job"]["parameters"]["learning_rate"], i["job"]["parameters"]["seed"])
        for i in out["items"]
    ]
    assert points == [(0.1, 1), (0.1, 2), (0.01, 1), (0.01, 2)]
    assert {i["job"]["parameters"]["epochs"] for i in out["items"]} == {3}
    # concurrent=1: the first runs, the rest wait, exactly as four singles would.
    assert [i["job"]["state"] for i in out["items"]] == ["scheduled", "held", "held", "held"]
    assert [i["job"]["idempotency_key"] for i in out["items"]] == [f"grid/{n}" for n in range(4)]
    again = alice.json(*args)
    assert [i["status"] for i in again["items"]] == [200] * 4
    assert len(fake.runs) == 4
    # A point the schema refuses is reported on its line; the others go in; exit 1.
    result = alice("job", "submit", "train", "--sweep", "epochs=2,ten", "--org", slug, code=1)
    assert "refused" in result.stdout and "epochs" in result.stdout
    assert "1 submitted, 0 already there, 1 refused." in result.stdout
    assert len(fake.runs) == 5
    err = alice("job", "submit", "train", "--sweep", "x=1", "--explain", "--org", slug, code=2)
    assert "--sweep" in err.stderr


def test_schedule_commands(world: tuple[Cli, Cli, str, FakePrefect]) -> None:
    alice, owner, slug, _fake = world
    alice("deploy", str(REPO_ROOT / "prefect.yaml"), "--name", "etl", "--org", slug)
    sched = alice.json(
        "schedule", "create", "etl", "--cron", "*/5 * * * *", "-p", "rows=10", "--org", slug
    )
    assert (sched["cron"], sched["parameters"], sched["user"]) == (
        "*/5 * * * *",
        {"rows": 10},
        sched["user"],
    )
    assert "etl" in alice("schedule", "list", "--org", slug).stdout
    assert "paused" in alice("schedule", "pause", sched["id"], "--org", slug).stdout
    assert alice.json("schedule", "list", "--org", slug)["items"][0]["active"] is False
    alice("schedule", "resume", sched["id"], "--org", slug)
    err = alice("schedule", "create", "etl", "--cron", "soon", "--org", slug, code=1).stderr
    assert "cron" in err
    owner("schedule", "delete", sched["id"], "--org", slug)
    assert alice.json("schedule", "list", "--org", slug)["items"] == []
