"""Team limits on both backends: a team's cap on its members' concurrent jobs combined
holds exactly under concurrent submissions to a live API (uvicorn, real threads, the
same org lock as the per-user limits), the dispatcher releases the team's held jobs as
its slots free, a team's machine types refuse others, and `--explain` names the team
rule."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from api.app import create_app
from flows.dispatch.dispatcher import Dispatcher
from orgs.db import Database
from tests.integration.test_jobs_support import (
    FakePrefect,
    count_jobs,
    jobs_app,
    limits_doc,
    settings_with,
    setup_org,
)
from tests.support import serve_in_thread

pytestmark = pytest.mark.timeout(180)

ACTIVE = ["scheduled", "running", "cancelling"]


def test_team_cap_holds_exactly_under_concurrency(database: Database) -> None:
    slug = f"tl{uuid.uuid4().hex[:6]}"
    fake = FakePrefect()
    with jobs_app(database, fake) as api:
        # Per-user limits far above the team's: only the team rule can hold anything.
        org = setup_org(
            api, slug, limits_doc(concurrent=10, types={"cpu": (100, 10), "gpu": (10, 10)})
        )
        org.deploy("train", parameter_schema={})
        alice, bob, carol = org.add_member(), org.add_member(), org.add_member()
        base = f"/orgs/{slug}/teams"
        r = api.post(base, org.owner, json={"name": "vision", "max_concurrent_jobs": 3})
        assert r.status_code == 201, r.text
        for who in (alice, bob):
            assert (
                api.post(f"{base}/vision/members", org.owner, json={"user": who.name}).status_code
                == 201
            )

    app = create_app(settings_with(), database, fake)  # type: ignore[arg-type]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as http:

        def submit(who: Any) -> dict[str, Any]:
            r = http.post(f"/orgs/{slug}/jobs", headers=who.headers, json={"deployment": "train"})
            assert r.status_code == 201, r.text
            out: dict[str, Any] = r.json()
            return out

        with ThreadPoolExecutor(10) as pool:
            made = list(pool.map(submit, [alice, bob] * 5))
        states = sorted(j["state"] for j in made)
        assert states == ["held"] * 7 + ["scheduled"] * 3, states
        held = [j for j in made if j["state"] == "held"]
        assert {j["rule"] for j in held} == {"team_concurrency"}
        assert all("team vision: max_concurrent_jobs" in j["reason"] for j in held)
        # Carol is in no team: the team's cap does not touch her.
        assert submit(carol)["state"] == "scheduled"

        ex = http.post(
            f"/orgs/{slug}/jobs/explain", headers=alice.headers, json={"deployment": "train"}
        ).json()
        assert (ex["decision"], ex["rule"]) == ("hold", "team_concurrency")
        assert "Your team 'vision' has 3 of 3" in ex["reason"]

    # Two of the team's jobs end: exactly two held ones are released, never more.
    running = [j for j in made if j["state"] == "scheduled"]
    for job in running[:2]:
        fake.finish(uuid.UUID(job["flow_run_id"]))
    dispatcher = Dispatcher(database, fake, settings_with())  # type: ignore[arg-type]
    for _ in range(3):
        dispatcher.run_once()
    team_ids = {uuid.UUID(p.id) for p in (alice, bob)}
    active = sum(count_jobs(database, state=ACTIVE, user_id=u) for u in team_ids)
    assert active == 3
    assert sum(count_jobs(database, state="held", user_id=u) for u in team_ids) == 5


def test_team_machine_types_and_explain(database: Database) -> None:
    slug = f"tm{uuid.uuid4().hex[:6]}"
    with jobs_app(database, FakePrefect()) as api:
        org = setup_org(api, slug, limits_doc(types={"cpu": (100, 10), "gpu": (10, 10)}))
        org.deploy("train", parameter_schema={})
        org.deploy("train-gpu", machine_type="gpu", parameter_schema={})
        alice = org.add_member()
        base = f"/orgs/{slug}/teams"
        assert (
            api.post(
                base, org.owner, json={"name": "cpu-only", "machine_types": ["cpu"]}
            ).status_code
            == 201
        )
        assert (
            api.post(f"{base}/cpu-only/members", org.owner, json={"user": alice.name}).status_code
            == 201
        )

        r = org.submit(alice, "train-gpu")
        assert r.status_code == 422, r.text  # the request's machine_type is at fault
        body = r.json()
        assert (body["error"], body.get("rule")) == ("team_machine_types", "team_machine_types")
        assert "cpu-only" in body["detail"] and "'gpu'" in body["detail"]
        ex = api.post(f"/orgs/{slug}/jobs/explain", alice, json={"deployment": "train-gpu"}).json()
        assert (ex["decision"], ex["rule"]) == ("reject", "team_machine_types")
        rules = {o["rule"]: o["status"] for o in ex["rules"]}
        assert rules["team_machine_types"] == "fail" and rules["team_concurrency"] == "skip"
        assert org.submit(alice, "train").status_code == 201
        # The owner is in no team: any type.
        assert org.submit(org.owner, "train-gpu").status_code == 201
        # The team allows gpu too: now Alice may.
        r = api.patch(f"{base}/cpu-only", org.owner, json={"machine_types": ["cpu", "gpu"]})
        assert r.status_code == 200
        assert org.submit(alice, "train-gpu").status_code == 201


def test_a_batch_counts_the_team_cap_as_singles_would(database: Database) -> None:
    """`jobs:batch` counts once under the org lock and then in memory: the team's running
    jobs must be counted there too, so a batch of 5 under a cap of 3 (one already used by
    a teammate) gives 2 scheduled and 3 held."""
    slug = f"tb{uuid.uuid4().hex[:6]}"
    fake = FakePrefect()
    with jobs_app(database, fake) as api:
        org = setup_org(
            api, slug, limits_doc(concurrent=10, types={"cpu": (100, 10), "gpu": (10, 10)})
        )
        org.deploy("train", parameter_schema={})
        alice, bob = org.add_member(), org.add_member()
        base = f"/orgs/{slug}/teams"
        assert (
            api.post(base, org.owner, json={"name": "nlp", "max_concurrent_jobs": 3}).status_code
            == 201
        )
        for who in (alice, bob):
            assert (
                api.post(f"{base}/nlp/members", org.owner, json={"user": who.name}).status_code
                == 201
            )
        first = api.post(f"/orgs/{slug}/jobs", bob, json={"deployment": "train"})
        assert first.status_code == 201 and first.json()["state"] == "scheduled", first.text
        r = api.post(
            f"/orgs/{slug}/jobs:batch",
            alice,
            json={"jobs": [{"deployment": "train"} for _ in range(5)]},
        )
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        states = [item["job"]["state"] for item in items]
        assert states == ["scheduled", "scheduled", "held", "held", "held"], states
        assert {item["job"]["rule"] for item in items[2:]} == {"team_concurrency"}
