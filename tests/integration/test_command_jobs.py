"""Command jobs (`cshare job run --image`) against the session's real Prefect server:
submission on the org's built-in command deployment, admission as for any job, and
bad input refused (422 naming the field) with nothing created."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from flows.gateway import PrefectGateway
from flows.models import Deployment
from orgs.db import Database
from tests.integration.test_jobs_support import (
    OrgSetup,
    count_jobs,
    jobs_app,
    limits_doc,
    setup_org,
)

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.timeout(240)]

IMAGE = "127.0.0.1:5000/team/tool:1"


@pytest.fixture
def org(sqlite_database: Database, prefect_gateway: PrefectGateway) -> Iterator[OrgSetup]:
    with jobs_app(sqlite_database, prefect_gateway) as api:
        slug = f"cmd{uuid.uuid4().hex[:8]}"
        yield setup_org(api, slug, limits_doc(memory=1024, types={"cpu": (10, 5), "gpu": (1, 1)}))


def _run(org: OrgSetup, who: Any = None, **body: Any) -> Any:
    body.setdefault("image", IMAGE)
    body.setdefault("command", ["sh", "-c", "echo hi"])
    return org.api.post(f"/orgs/{org.slug}/jobs", who or org.owner, json=body)


def test_a_command_job_is_a_job_on_the_built_in_deployment(
    org: OrgSetup, prefect_gateway: PrefectGateway
) -> None:
    member = org.add_member()
    r = _run(org, member, cpus=0.5, resources={"memory_mb": 256}, outputs=["results"])
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["deployment"] == "cshare-command-cpu"
    assert job["image"] == {"ref": IMAGE, "digest": None}
    assert job["parameters"] == {"image": IMAGE, "command": ["sh", "-c", "echo hi"], "cpus": 0.5}
    assert job["resources"]["memory_mb"] == 256
    assert job["flow_run_id"] is not None
    run = prefect_gateway.read_flow_run(uuid.UUID(job["flow_run_id"]))
    assert run is not None
    # A second one (another member, another type) reuses or makes one deployment per type.
    assert _run(org).status_code == 201
    assert _run(org, machine_type="gpu").status_code == 201
    with org.api.db.session(write=False) as s:
        names = sorted(
            s.scalars(select(Deployment.name).where(Deployment.name.like("cshare-command-%")))
        )
        owners = set(
            s.scalars(select(Deployment.created_by).where(Deployment.name.like("cshare-command-%")))
        )
    assert names == ["cshare-command-cpu", "cshare-command-gpu"]
    assert owners == {None}  # nobody's own: a member cannot delete it
    r = org.api.delete(f"/orgs/{org.slug}/deployments/cshare-command-cpu", member)
    assert r.status_code == 403, r.text


def test_admission_applies_as_for_any_job(org: OrgSetup) -> None:
    r = _run(org, resources={"memory_mb": 999_999})
    assert r.status_code == 422 and r.json()["error"] == "memory_within_limit", r.text
    r = _run(org, machine_type="tpu")
    assert r.status_code == 422 and "tpu" in r.json()["detail"], r.text
    assert count_jobs(org.api.db) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": "Not An Image!"}, "image"),
        ({"image": ""}, "image"),
        ({"command": []}, "command"),
        ({"command": ["ok", "bad\x00arg"]}, "command.1"),
        ({"cpus": 0}, "cpus"),
        ({"cpus": 5000}, "cpus"),
        ({"deployment": "train"}, "deployment"),
        ({"parameters": {"x": 1}}, "parameters"),
    ],
)
def test_bad_command_jobs_are_422_naming_the_field(
    org: OrgSetup, body: dict[str, Any], field: str
) -> None:
    r = _run(org, **body)
    assert r.status_code == 422, r.text
    assert r.json().get("field") == field or field in r.json()["detail"], r.json()
    assert count_jobs(org.api.db) == 0
    with org.api.db.session(write=False) as s:
        made = s.scalar(select(func.count()).select_from(Deployment))
    assert made == 0  # nothing half done: not even the built-in deployment
