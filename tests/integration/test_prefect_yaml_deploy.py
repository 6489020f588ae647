"""`cshare deploy` of a prefect.yaml against a live API and the real Prefect server:
every deployment of the file with its schedules (cron, interval, rrule), concurrency
limit, version and job variables; redeploying replaces the file's schedules and keeps
members' own; the concurrency limit holds (enqueue) or rejects (cancel_new) a second job.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from flows.dispatch.dispatcher import Dispatcher
from flows.gateway import PrefectGateway
from orgs.db import Database
from tests.integration.test_jobs_cli import Cli
from tests.integration.test_jobs_support import jobs_app, limits_doc, settings_with, setup_org
from tests.support import serve_in_thread

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(240),
]

FLOWS = """
from prefect import flow


@flow
def report(day: str = "today", rows: int = 10) -> int:
    return rows


@flow
def cleanup(keep: int = 3) -> int:
    return keep
"""

PREFECT_YAML = """
name: reports
prefect-version: 3.8.8
owner: data-team            # unknown top-level key: a warning, not an error
definitions:
  pool: &pool
    name: {slug}-cpu
    job_variables: {{env: {{REPORT_MODE: full}}}}
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{{{ $CSHARE_FLOWS_DIR }}}}"
deployments:
  - name: report
    entrypoint: flows.py:report
    description: Daily report.
    version: "1.0"
    tags: [reports]
    parameters: {{rows: 5}}
    concurrency_limit: 1
    work_pool: *pool
    schedules:
      - cron: "0 9 * * 1-5"
        timezone: Europe/Paris
        parameters: {{day: weekday}}
      - interval: 60
        anchor_date: "2026-01-01T00:00:00Z"
      {rrule}
  - name: cleanup
    entrypoint: flows.py:cleanup
    retries: 3              # unknown key: a warning naming it
    concurrency_limit:
      limit: 1
      collision_strategy: CANCEL_NEW
    work_pool: *pool
    schedule:
      cron: "@daily"
      active: false
"""
RRULE = '- rrule: "FREQ=WEEKLY;BYDAY=MO;BYHOUR=7"\n        timezone: America/New_York'


def write_project(root: Path, slug: str, *, with_rrule: bool = True) -> Path:
    root.mkdir(exist_ok=True)
    (root / "flows.py").write_text(FLOWS)
    text = PREFECT_YAML.format(slug=slug, rrule=RRULE if with_rrule else "")
    (root / "prefect.yaml").write_text(textwrap.dedent(text))
    return root / "prefect.yaml"


@pytest.fixture
def world(
    database: Database, prefect_gateway: PrefectGateway
) -> Iterator[tuple[Cli, Cli, str, Any]]:
    slug = f"py{uuid.uuid4().hex[:6]}"
    with jobs_app(database, prefect_gateway) as api:
        org = setup_org(api, slug, limits_doc(concurrent=10))
        alice = org.add_member()
        server_app = create_app(settings_with(), database, prefect_gateway)
        with serve_in_thread(server_app) as url:
            base = url.removesuffix("/api/v1")
            config_dir = Path(database.engine.url.database or "/tmp").parent
            yield (
                Cli(base, alice, config_dir / f"{slug}-alice.toml"),
                Cli(base, org.owner, config_dir / f"{slug}-owner.toml"),
                slug,
                (api, org),
            )
            # Leave Prefect as found: the org's deployments (and their schedules) go.
            for name in ("report", "cleanup"):
                for job in api.get(f"/orgs/{slug}/jobs", org.owner).json()["items"]:
                    if job["state"] in ("held", "scheduled", "running"):
                        api.post(f"/orgs/{slug}/jobs/{job['id']}/cancel", org.owner)
                api.delete(f"/orgs/{slug}/deployments/{name}", org.owner)


def prefect_schedules(gateway: PrefectGateway, dep: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = gateway._get(
        f"/deployments/{dep['prefect_deployment_id']}/schedules"
    )
    return found


def declared(cli: Cli, slug: str, deployment: str) -> list[dict[str, Any]]:
    items = cli.json("schedule", "list", "--org", slug)["items"]
    return [s for s in items if s["deployment"] == deployment and s["declared"]]


def test_deploy_a_prefect_yaml_with_schedules_and_concurrency(
    world: tuple[Cli, Cli, str, Any],
    prefect_gateway: PrefectGateway,
    database: Database,
    tmp_path: Path,
) -> None:
    alice, owner, slug, _api = world
    file = write_project(tmp_path / "proj", slug)

    result = alice("deploy", str(file), "--org", slug, "--json")
    assert "unknown top-level key 'owner'" in result.stderr
    assert "deployment 'cleanup': unknown key 'retries'" in result.stderr
    items = {d["name"]: d for d in json.loads(result.stdout)["items"]}
    assert set(items) == {"report", "cleanup"}
    report, cleanup = items["report"], items["cleanup"]
    assert (report["concurrency_limit"], report["collision_strategy"]) == (1, "enqueue")
    assert (cleanup["concurrency_limit"], cleanup["collision_strategy"]) == (1, "cancel_new")
    assert report["work_pool"] == f"{slug}-cpu" and report["machine_type"] == "cpu"
    assert report["job_variables"] == {"env": {"REPORT_MODE": "full"}}
    assert report["parameters"] == {"rows": 5} and report["tags"] == ["reports"]
    assert report["description"] == "Daily report."
    assert len(report["schedules"]) == 3 and len(cleanup["schedules"]) == 1

    # Ours: three kinds, each with its time zone and parameters.
    mine = {s["kind"]: s for s in declared(alice, slug, "report")}
    assert set(mine) == {"cron", "interval", "rrule"}
    assert (mine["cron"]["cron"], mine["cron"]["timezone"]) == ("0 9 * * 1-5", "Europe/Paris")
    assert mine["cron"]["parameters"] == {"day": "weekday"}
    assert mine["interval"]["interval_s"] == 60.0
    assert mine["interval"]["anchor_date"].startswith("2026-01-01T00:00:00")
    assert (mine["rrule"]["rrule"], mine["rrule"]["timezone"]) == (
        "FREQ=WEEKLY;BYDAY=MO;BYHOUR=7",
        "America/New_York",
    )
    (legacy,) = declared(alice, slug, "cleanup")
    assert (legacy["cron"], legacy["active"]) == ("@daily", False)

    # Prefect's: the same schedules (inactive there: the control plane fires them), the
    # version, and no Prefect concurrency limit (our admission enforces it).
    in_prefect = {x["slug"]: x for x in prefect_schedules(prefect_gateway, report)}
    assert set(in_prefect) == {f"cshare-{s['id']}" for s in mine.values()}
    by_kind = {s["kind"]: in_prefect[f"cshare-{s['id']}"] for s in mine.values()}
    assert by_kind["cron"]["schedule"]["cron"] == "0 9 * * 1-5"
    assert by_kind["cron"]["schedule"]["timezone"] == "Europe/Paris"
    assert by_kind["cron"]["parameters"] == {"day": "weekday"}
    assert by_kind["interval"]["schedule"]["interval"] == 60.0
    # Prefect adds its default DTSTART (2020-01-01), the one our fire times use too.
    assert by_kind["rrule"]["schedule"]["rrule"].endswith("FREQ=WEEKLY;BYDAY=MO;BYHOUR=7")
    assert not any(x["active"] for x in in_prefect.values())
    dep = prefect_gateway._get(f"/deployments/{report['prefect_deployment_id']}")
    assert dep["version"] == "1.0"
    assert dep["concurrency_limit"] is None
    assert dep["job_variables"] == {"env": {"REPORT_MODE": "full"}}

    # Redeploying the same file keeps the same schedules (their fire history too).
    again = alice.json("deploy", str(file), "--org", slug)
    by_name = {d["name"]: d for d in again["items"]}
    assert sorted(by_name["report"]["schedules"]) == sorted(s["id"] for s in mine.values())

    # A member's own schedule survives a deploy; a schedule dropped from the file goes.
    own = alice.json("schedule", "create", "report", "--interval", "120", "--org", slug)
    assert (own["kind"], own["declared"]) == ("interval", False)
    write_project(tmp_path / "proj", slug, with_rrule=False)
    alice("deploy", str(file), "--org", slug)
    kinds = sorted(s["kind"] for s in declared(alice, slug, "report"))
    assert kinds == ["cron", "interval"]
    assert len(prefect_schedules(prefect_gateway, report)) == 3  # two declared + her own
    listed = alice("schedule", "list", "--org", slug).stdout
    assert "every 120s" in listed and "cron '0 9 * * 1-5'" in listed
    owner("schedule", "delete", own["id"], "--org", slug)

    # concurrency_limit 1, enqueue: the second job of `report` is held by that rule,
    # and released when the first is over.
    first = alice.json("job", "submit", "report", "--org", slug)
    assert first["state"] == "scheduled"
    second = alice.json("job", "submit", "report", "--org", slug)
    assert (second["state"], second["rule"]) == ("held", "deployment_concurrency")
    assert "1 of 1" in second["reason"]
    # Another deployment is not affected.
    other = alice.json("job", "submit", "cleanup", "--org", slug)
    assert other["state"] == "scheduled"
    # cancel_new: a job beyond the limit is rejected, not queued.
    err = alice("job", "submit", "cleanup", "--org", slug, code=1).stderr
    assert "rejects new ones" in err

    # The interval schedule fires within the horizon: held behind the same limit.
    dispatcher = Dispatcher(
        database, prefect_gateway, settings_with(dispatcher_adopt_horizon_s=150)
    )
    dispatcher.run_once()
    jobs = alice.json("job", "list", "--org", slug)["items"]
    fired = [j for j in jobs if j.get("source") == "schedule"]
    assert fired, jobs
    assert {(j["state"], j["rule"]) for j in fired} == {("held", "deployment_concurrency")}

    owner("job", "cancel", first["id"], "--org", slug)
    for _ in range(10):
        dispatcher.run_once()
        state = alice.json("job", "show", second["id"], "--org", slug)["state"]
        if state == "scheduled":
            break
    assert state == "scheduled"


def test_bad_schedule_in_the_file_changes_nothing(
    world: tuple[Cli, Cli, str, Any], tmp_path: Path
) -> None:
    alice, _owner, slug, _api = world
    root = tmp_path / "bad"
    root.mkdir()
    (root / "flows.py").write_text(FLOWS)
    (root / "prefect.yaml").write_text(
        textwrap.dedent(
            """
            deployments:
              - name: report
                entrypoint: flows.py:report
                schedules:
                  - rrule: "FREQ=SOMETIMES"
            """
        )
    )
    err = alice("deploy", str(root / "prefect.yaml"), "--org", slug, code=1).stderr
    assert "rrule" in err and "FREQ=SOMETIMES" in err
    api, org = _api
    assert api.get(f"/orgs/{slug}/deployments", org.owner).json()["items"] == []


def test_prefect_backend_activates_every_kind_in_prefect(
    database: Database, prefect_gateway: PrefectGateway
) -> None:
    slug = f"pb{uuid.uuid4().hex[:6]}"
    with jobs_app(database, prefect_gateway, schedules_backend="prefect") as api:
        org = setup_org(api, slug, limits_doc())
        dep = org.deploy(
            "train",
            schedules=[
                {"interval_s": 3600, "timezone": "Europe/Paris"},
                {"rrule": "FREQ=DAILY;BYHOUR=6", "active": False},
            ],
        )
        try:
            got = {
                next(k for k in ("interval", "rrule") if k in x["schedule"]): x
                for x in prefect_schedules(prefect_gateway, dep)
            }
            # Prefect's scheduler makes these runs: active there unless paused in the file.
            assert got["interval"]["active"] is True
            assert got["interval"]["schedule"]["timezone"] == "Europe/Paris"
            assert got["rrule"]["active"] is False
        finally:
            api.delete(f"/orgs/{slug}/deployments/train", org.owner)
