"""Recurring jobs against the real Prefect scheduler: a schedule's runs are admitted like
submissions of its creator, so a member at their limit gets held runs, not extra ones."""

from __future__ import annotations

import uuid

import pytest

from flows.dispatch.dispatcher import Dispatcher
from flows.gateway import HELD_STATE_NAME, PrefectGateway, StateType
from orgs.db import Database
from tests.integration.test_jobs_support import (
    count_jobs,
    jobs_app,
    limits_doc,
    settings_with,
    setup_org,
)

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(180),
]


def test_schedule_at_the_limit_yields_held_runs(
    database: Database, prefect_gateway: PrefectGateway
) -> None:
    slug = f"sc{uuid.uuid4().hex[:6]}"  # no worker: a scheduled job keeps its slot
    with jobs_app(database, prefect_gateway) as api:
        org = setup_org(api, slug, limits_doc(concurrent=1))
        dep = org.deploy("train")
        alice, bob = org.add_member(), org.add_member()
        first = org.submit(alice, parameters={"epochs": 1}).json()
        assert first["state"] == "scheduled"

        r = api.post(
            f"/orgs/{slug}/schedules",
            alice,
            json={"deployment": "train", "cron": "* * * * *", "parameters": {"epochs": 1}},
        )
        assert r.status_code == 201, r.text
        schedule = r.json()
        assert schedule["user"] == alice.name and schedule["active"] is True
        bad = api.post(
            f"/orgs/{slug}/schedules", alice, json={"deployment": "train", "cron": "every minute"}
        )
        assert (bad.status_code, bad.json()["field"]) == (422, "cron")
        bad = api.post(
            f"/orgs/{slug}/schedules",
            alice,
            json={"deployment": "train", "cron": "* * * * *", "parameters": {"nope": 1}},
        )
        assert (bad.status_code, bad.json()["field"]) == (422, "parameters.nope")
        # Only its creator or an admin may pause it.
        assert (
            api.patch(
                f"/orgs/{slug}/schedules/{schedule['id']}", bob, json={"active": False}
            ).status_code
            == 403
        )

        # The schedule is on the deployment in Prefect (inactive there: the control
        # plane fires it, so Prefect's scheduler cannot double it).
        prefect_id = uuid.UUID(dep["prefect_deployment_id"])
        in_prefect = prefect_gateway._get(f"/deployments/{prefect_id}/schedules")
        assert [(x["slug"], x["active"], x["schedule"]["cron"]) for x in in_prefect] == [
            (f"cshare-{schedule['id']}", False, "* * * * *")
        ]

        # Fires due within the next 150 s become alice's jobs: held, she is at her limit.
        dispatcher = Dispatcher(
            database, prefect_gateway, settings_with(dispatcher_adopt_horizon_s=150)
        )
        dispatcher.run_once()
        dispatcher.run_once()
        jobs = api.get(f"/orgs/{slug}/jobs", alice).json()["items"]
        scheduled = [j for j in jobs if j["source"] == "schedule"]
        assert len(scheduled) in (2, 3)
        assert {(j["state"], j["rule"]) for j in scheduled} == {("held", "user_concurrency")}
        assert all(j["user"]["name"] == alice.name for j in scheduled)
        assert all(j["parameters"] == {"epochs": 1} for j in scheduled)
        for job in scheduled:
            run = prefect_gateway.read_flow_run(uuid.UUID(job["flow_run_id"]))
            assert (run.state_type, run.state_name) == (StateType.SCHEDULED, HELD_STATE_NAME)
            assert "max_concurrent_jobs_per_user" in (run.message or "")
            assert {f"user:{alice.name}", f"schedule:{schedule['id']}"} <= set(run.tags)
        # Not one extra run may start: only the submitted job holds alice's slot, and
        # it is the only run of the deployment a worker could pick up.
        assert count_jobs(database, state=["scheduled", "running"]) == 1
        live = prefect_gateway.count_flow_runs(
            deployment_id=prefect_id, state_types=[StateType.SCHEDULED], state_names=["Scheduled"]
        )
        assert live == 1

        # Her slot frees, but a fire is not released before its time.
        api.post(f"/orgs/{slug}/jobs/{first['id']}/cancel", alice)
        dispatcher.run_once()
        assert count_jobs(database, source="schedule", state="scheduled") == 0

        r = api.patch(f"/orgs/{slug}/schedules/{schedule['id']}", alice, json={"active": False})
        assert r.status_code == 200 and r.json()["active"] is False
        assert api.delete(f"/orgs/{slug}/schedules/{schedule['id']}", org.owner).status_code == 204
        assert api.get(f"/orgs/{slug}/schedules", alice).json()["items"] == []
        for job in api.get(f"/orgs/{slug}/jobs", org.owner).json()["items"]:
            if job["state"] not in ("cancelled", "completed", "rejected"):
                api.post(f"/orgs/{slug}/jobs/{job['id']}/cancel", org.owner)
