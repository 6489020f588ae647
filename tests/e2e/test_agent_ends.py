"""How an agent ends, end to end: every piece a real process (see test_agents.py).

An agent stops, says why in one line and exits with the status docs/agents.md
documents, never with a traceback:

- SIGTERM: its running job ends (`Crashed` in Prefect, the job final), exit 0;
- its machine removed, its owner removed from the organization or leaving it: its
  running job ends, exit 3;
- the organization deleted: exit 3, and Prefect keeps nothing of the organization
  alive: no run tagged `org:<slug>` in a non-terminal state, none of its work pools.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from typing import Any

import pytest

from flows.gateway import StateType
from policies.errors import NotFound
from tests.e2e.test_agents import HERE, Stack, stack, wait_for
from tests.prefect_server import PREFECT_STALL_S

__all__ = ["stack"]  # the module's stack fixture (test_agents.py)

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.slow]

EXIT_STOPPED = 0
EXIT_ENDED = 3
LIVE = [
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.CANCELLING,
    StateType.PAUSED,
]


def _log(stack: Stack, name: str) -> str:
    return (stack.home / f"agent-{name}.log").read_text(errors="replace")


def _start_approved(
    stack: Stack,
    name: str,
    *,
    token: str | None = None,
    org: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """An agent on a new `cpu` machine with one slot, approved and online."""
    slug = org or stack.slug
    agent = stack.start_agent(name, "cpu", 1, token=token, org=slug, extra_env=extra_env)
    owner = stack.owner if org is None else stack.member

    def registered() -> dict[str, Any] | None:
        if agent.poll() is not None:
            raise AssertionError(f"agent {name} exited {agent.returncode}:\n{_log(stack, name)}")
        items = stack.ok("GET", f"/orgs/{slug}/machines", owner)["items"]
        return next((m for m in items if m["name"] == name), None)

    machine = wait_for(f"{name} to register", registered, 60)
    if machine["status"] == "pending":
        stack.ok("POST", f"/orgs/{slug}/machines/{machine['id']}/approve", owner)
    stack.machine_ids[name] = machine["id"]
    return agent


def _running_sleeper(stack: Stack, org: str | None = None) -> tuple[str, uuid.UUID]:
    """A job that sleeps for minutes, once it runs: (job id, flow run id)."""
    slug = org or stack.slug
    who = stack.owner if org is None else stack.member
    job = stack.ok(
        "POST",
        f"/orgs/{slug}/jobs",
        who,
        json={"deployment": "sleeper", "parameters": {"seconds": 600}},
    )
    job_id = str(job["id"])
    running = wait_for(
        "the sleeper to run",
        lambda: (
            (j := stack.ok("GET", f"/orgs/{slug}/jobs/{job_id}", who))["state"] == "running" and j
        ),
        90 + PREFECT_STALL_S,
    )
    run_id = uuid.UUID(running["flow_run_id"])
    # Its process runs (the ledger says `running` from the claim on).
    wait_for(
        "the flow to run",
        lambda: stack.gateway.read_flow_run(run_id).state_type is StateType.RUNNING,
        60 + PREFECT_STALL_S,
    )
    return job_id, run_id


def _ended(stack: Stack, name: str, agent: subprocess.Popen[bytes], code: int, says: str) -> str:
    """The agent exited with `code`, without a traceback, saying `says` once."""
    try:
        returned = agent.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"agent {name} did not stop:\n{_log(stack, name)}") from None
    finally:
        stack.agents.pop(name, None)
    log = _log(stack, name)
    assert returned == code, f"exit {returned}, not {code}:\n{log}"
    # The agent's own crash is typer's boxed traceback (its log lines never carry one);
    # a job's process may print Python's plain one into the same log when its
    # credential ends under it, which is the job's business.
    assert "─ Traceback (most recent call last) ─" not in log, log
    last = log.rstrip().splitlines()[-1]
    # One line from the agent's own logger (agents/logsetup.py format) says why (the
    # worker's refused Prefect calls may quote the server's reason in their warnings).
    assert " cshare.agent " in last and says in last, log
    own = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ +\w+ +cshare\.agent ")
    assert sum(bool(own.match(line)) and says in line for line in log.splitlines()) == 1, log
    return log


def _run_ends(stack: Stack, run_id: uuid.UUID, state: StateType, says: str = "") -> None:
    """The run ends in `state` (with `says` in its message). A cancelled run may carry
    Prefect's own "cancelled successfully" when its cancellation observer got there
    first; the reason is on its `Cancelling` state then."""
    run = wait_for(
        "the run to end in Prefect",
        lambda: (r := stack.gateway.read_flow_run(run_id)).is_final and r,
        30 + PREFECT_STALL_S,
    )
    assert run.state_type is state, run
    assert says in (run.message or ""), run


def test_sigterm_stops_the_running_job_and_exits_0(stack: Stack) -> None:
    agent = _start_approved(stack, "term-box")
    job_id, run_id = _running_sleeper(stack)
    agent.send_signal(signal.SIGTERM)
    _ended(stack, "term-box", agent, EXIT_STOPPED, "was stopped")
    _run_ends(stack, run_id, StateType.CRASHED, "was stopped")
    job = stack.wait_final(job_id, 30 + PREFECT_STALL_S)
    assert job["state"] == "crashed", job


def test_a_removed_machine_stops_its_job_and_exits_3(stack: Stack) -> None:
    agent = _start_approved(stack, "gone-box")
    job_id, run_id = _running_sleeper(stack)
    stack.ok("DELETE", f"/orgs/{stack.slug}/machines/{stack.machine_ids['gone-box']}", stack.owner)
    _ended(stack, "gone-box", agent, EXIT_ENDED, "was removed")
    _run_ends(stack, run_id, StateType.CANCELLED)
    assert stack.wait_final(job_id, 30 + PREFECT_STALL_S)["state"] == "cancelled"


@pytest.mark.parametrize("how", ["removed", "left"])
def test_an_owner_no_longer_member_stops_the_agent_with_3(stack: Stack, how: str) -> None:
    headers, token = stack.signup(f"lender{uuid.uuid4().hex[:6]}")
    stack.invite(headers)
    lender = stack.ok("GET", "/me", headers)
    name = f"lent-box-{how}"
    agent = _start_approved(stack, name, token=token)
    job_id, run_id = _running_sleeper(stack)
    if how == "removed":
        stack.ok("DELETE", f"/orgs/{stack.slug}/members/{lender['id']}", stack.owner)
    else:
        stack.ok("POST", f"/orgs/{stack.slug}/leave", headers)
    _ended(stack, name, agent, EXIT_ENDED, "no longer a member")
    _run_ends(stack, run_id, StateType.CANCELLED)
    assert stack.wait_final(job_id, 30 + PREFECT_STALL_S)["state"] == "cancelled"


def test_deleting_the_org_stops_its_agent_and_leaves_nothing_in_prefect(stack: Stack) -> None:
    who = stack.member
    org = stack.ok("POST", "/orgs", who, json={"name": f"Short-lived {uuid.uuid4().hex[:6]}"})
    slug = org["slug"]
    stack.ok(
        "PUT",
        f"/orgs/{slug}/settings",
        who,
        json={
            "machines": {"approval_required": False},
            "limits": {
                "organization": {"machine_types": {"cpu": {"max_scale": 10, "per_user_quota": 10}}}
            },
        },
    )
    stack.ok(
        "POST",
        f"/orgs/{slug}/deployments",
        who,
        json={
            "name": "sleeper",
            "entrypoint": "agent_flows.py:sleeper",
            "machine_type": "cpu",
            "path": str(HERE),
        },
    )
    pool = f"{slug}-cpu"
    assert stack.gateway.read_work_pool(pool).name == pool
    name = "doomed-box"
    agent = _start_approved(stack, name, token=stack.member_token, org=slug)
    _running_sleeper(stack, org=slug)
    # A second one waits for the only slot.
    stack.ok(
        "POST",
        f"/orgs/{slug}/jobs",
        who,
        json={"deployment": "sleeper", "parameters": {"seconds": 600}},
    )
    tag = [f"org:{slug}"]
    assert stack.gateway.count_flow_runs(tags=tag, state_types=LIVE) == 2
    stack.ok("DELETE", f"/orgs/{slug}", who, json={"confirm": org["name"]})
    _ended(stack, name, agent, EXIT_ENDED, "was deleted")

    def pool_gone() -> bool:
        try:
            stack.gateway.read_work_pool(pool)
        except NotFound:
            return True
        return False

    deadline = time.monotonic() + 60 + PREFECT_STALL_S
    wait_for(
        "no live run of the org",
        lambda: stack.gateway.count_flow_runs(tags=tag, state_types=LIVE) == 0,
        deadline - time.monotonic(),
        0.5,
    )
    wait_for("the org's work pool to go", pool_gone, deadline - time.monotonic(), 0.5)
