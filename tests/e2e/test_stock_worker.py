"""A stock Prefect worker is no way around the claim gate or the tenant boundary.

Prefect's auth string stays with the control plane, so the most a member holds is their
own credentials: here, the machine token of a machine they registered (and an admin
approved) in organization A. With it, through the server's Prefect proxy:

- a stock `prefect worker start --type process` on organization B's pool is refused and
  B's queued job never leaves `Scheduled` in Prefect;
- the same worker on A's own pool runs nothing either: it may see runs offered to its
  machine type, but only a claim through the control plane hands a run to a machine, so
  its attempt to take one is refused and the job waits for a real agent.

Both pass only when the attack fails. Real processes: Prefect server, `cshare server`,
the stock worker (`prefect worker start --run-once`).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_agents import (  # the agents module's stack and helpers
    HERE,
    Stack,
    _clean_env,
    _state_types,
    stack,
)

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.slow]

__all__ = ["stack"]  # the fixture, imported for this module's own stack

PREFECT = str(Path(sys.executable).parent / "prefect")
TAKEN = {"PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED"}


def _machine_token(stack: Stack) -> str:
    """A machine of the member's in org A, approved by the owner: its token."""
    body = stack.ok(
        "POST",
        f"/orgs/{stack.slug}/machines",
        stack.member,
        json={"name": f"attacker-{uuid.uuid4().hex[:6]}", "machine_type": "cpu", "slots": 1},
    )
    machine = body["machine"]
    stack.ok("POST", f"/orgs/{stack.slug}/machines/{machine['id']}/approve", stack.owner)
    # Its first call makes the control plane create the pool it may read.
    me = stack.http.get("/agent/me", headers={"Authorization": f"Bearer {body['machine_token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["prefect"] == {"api_url": None, "auth_string": None}  # no secret
    return str(body["machine_token"])


def _other_org(stack: Stack) -> tuple[str, dict[str, str]]:
    owner, _ = stack.signup(f"bowner{uuid.uuid4().hex[:6]}")
    slug = stack.ok("POST", "/orgs", owner, json={"name": f"Other {uuid.uuid4().hex[:6]}"})["slug"]
    stack.ok(
        "POST",
        f"/orgs/{slug}/deployments",
        owner,
        json={
            "name": "trivial",
            "entrypoint": "agent_flows.py:trivial",
            "machine_type": "cpu",
            "path": str(HERE),
        },
    )
    return slug, owner


def _stock_worker(stack: Stack, pool: str, token: str) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    env.update(
        PREFECT_API_URL=f"{stack.url}/prefect/api",
        PREFECT_API_KEY=token,
        PREFECT_API_AUTH_STRING=token,
        PREFECT_HOME=str(stack.home / f"stock-{uuid.uuid4().hex[:6]}"),
    )
    return subprocess.run(
        [PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--run-once"],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _never_taken(stack: Stack, job: dict[str, Any]) -> None:
    run_id = uuid.UUID(job["flow_run_id"])
    assert TAKEN.isdisjoint(_state_types(stack, run_id)), _state_types(stack, run_id)


def test_a_stock_worker_with_a_machine_token_cannot_take_another_orgs_runs(
    stack: Stack,
) -> None:
    token = _machine_token(stack)
    slug_b, owner_b = _other_org(stack)
    job = stack.ok("POST", f"/orgs/{slug_b}/jobs", owner_b, json={"deployment": "trivial"})
    assert job["flow_run_id"], job
    # What the worker's first call meets: the pool of another org is refused.
    pool = stack.http.get(
        f"{stack.url}/prefect/api/work_pools/{slug_b}-cpu",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert pool.status_code == 403, pool.text
    done = _stock_worker(stack, f"{slug_b}-cpu", token)
    time.sleep(2)
    _never_taken(stack, job)
    assert "Traceback" not in done.stdout + done.stderr or done.returncode != 0
    after = stack.ok("GET", f"/orgs/{slug_b}/jobs/{job['id']}", owner_b)
    assert after["state"] == "scheduled" and after["machine"] is None, after


def test_a_stock_worker_on_its_own_pool_runs_nothing_without_a_claim(stack: Stack) -> None:
    token = _machine_token(stack)
    job = stack.ok("POST", f"/orgs/{stack.slug}/jobs", stack.member, json={"deployment": "trivial"})
    assert job["flow_run_id"], job
    done = _stock_worker(stack, f"{stack.slug}-cpu", token)
    time.sleep(2)
    _never_taken(stack, job)
    after = stack.job(job["id"])
    assert after["state"] == "scheduled" and after["machine"] is None, (
        after,
        done.stdout[-2000:],
        done.stderr[-2000:],
    )
