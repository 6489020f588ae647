"""A job is isolated from the agent that runs it, end to end (real agent, API, Prefect;
the stack of test_agents.py):

- its environment is an allowlist (agents/job_env.py): a flow that dumps what it can
  see (its variables, and the environment its process and its reaper were started
  with, from /proc) finds no `CSHARE_TOKEN`, no machine token, none of the agent's own
  variables, and `HOME` is the job's directory;
- its processes die with the agent: after kill -9 of the agent, the flow's process and
  the `sleep` it started are gone within 10 s;
- a restarted agent kills the job processes its state file records (a process group
  the test started, recorded as a dead agent's job) before it takes work.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agents import config
from agents.job_env import is_proxy_url
from agents.job_groups import JobGroups
from tests.e2e.test_agent_ends import _start_approved
from tests.e2e.test_agents import HERE, Stack, stack, wait_for
from tests.prefect_server import PREFECT_STALL_S

__all__ = ["stack"]  # the module's stack fixture (test_agents.py)

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.slow]

AGENT = "iso-box"
SECRET = f"agent-only-{uuid.uuid4().hex}"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _deploy(stack: Stack, name: str, entrypoint: str) -> None:
    deployments = stack.ok("GET", f"/orgs/{stack.slug}/deployments", stack.owner)["items"]
    if any(d["name"] == name for d in deployments):
        return
    stack.ok(
        "POST",
        f"/orgs/{stack.slug}/deployments",
        stack.owner,
        json={"name": name, "entrypoint": entrypoint, "machine_type": "cpu", "path": str(HERE)},
    )


def _agent(stack: Stack) -> subprocess.Popen[bytes]:
    """The module's agent, with secrets of its own in its environment."""
    process = stack.agents.get(AGENT)
    if process is not None and process.poll() is None:
        return process
    return _start_approved(
        stack,
        AGENT,
        extra_env={"CSHARE_TEST_AGENT_SECRET": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET},
    )


def _machine_token(stack: Stack) -> str:
    creds = config.load(stack.url, stack.slug, AGENT, stack.home / "agent")
    assert creds is not None
    return creds.machine_token


def test_a_jobs_environment_holds_nothing_of_the_agents(stack: Stack, tmp_path: Path) -> None:
    _deploy(stack, "env-dump", "agent_flows.py:env_dump")
    _agent(stack)
    out = tmp_path / "env.json"
    job_id = stack.submit("env-dump", parameters={"out": str(out)})
    job = stack.wait_final(job_id, 90 + PREFECT_STALL_S)
    assert job["state"] == "completed", (job, stack.agent_log(AGENT))
    dump: dict[str, Any] = json.loads(out.read_text())
    env: dict[str, str] = dump["env"]
    secrets = {
        "the member's token": stack.member_token,
        "the machine token": _machine_token(stack),
        "the agent's own variable": SECRET,
        "the agent's Prefect home": str(stack.home / f"prefect-{AGENT}"),
    }
    # What the flow sees, and what its process and its reaper were started with.
    for where in ("env", "started_with", "parent_started_with"):
        seen: dict[str, str] = dump[where]
        assert "CSHARE_TOKEN" not in seen and "CSHARE_MACHINE_TOKEN" not in seen, where
        assert "CSHARE_TEST_AGENT_SECRET" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen
        for what, value in secrets.items():
            assert not any(value in v for v in seen.values()), f"{what} in {where}"
        assert stack.prefect.auth_string not in seen.values(), where  # Prefect's secret
        if is_proxy_url(env["PREFECT_API_URL"]):
            # Through the proxy (the default): the job token is the job's only Prefect
            # credential, as the key and as the auth string websocket clients send.
            assert seen.get("PREFECT_API_AUTH_STRING") in (None, env["CSHARE_JOB_TOKEN"])
        else:
            # The legacy direct mode (this stack: the agent talks to Prefect itself):
            # the engine needs Prefect's auth string, shared by the documented default
            # CSHARE_JOB_SHARE_PREFECT_AUTH=true; it is the only server secret there.
            assert seen.get("PREFECT_API_AUTH_STRING") in (None, stack.prefect.auth_string)
    assert dump["started_with"].get("CSHARE_JOB_TOKEN") is None  # a warm process: no job's
    # HOME: the directory the job started in (its deployment's pull step then moved
    # it to the flow's code, `cwd`), the agent's private one for this job.
    home = Path(env["HOME"])
    assert home.name == "work" and home.parent.name.startswith("cshare-job-"), home
    assert dump["cwd"] == str(HERE)
    assert Path(env["TMPDIR"]).parent == Path(env["HOME"]).parent
    assert Path(env["PREFECT_HOME"]).parent == Path(env["HOME"]).parent
    assert env["CSHARE_JOB_ID"] == job_id
    assert env["PREFECT_API_KEY"] == env["CSHARE_JOB_TOKEN"]  # its only Prefect credential
    wait_for("the job's directory to go", lambda: not Path(env["HOME"]).exists(), 30)


def test_a_jobs_processes_die_with_its_agent(stack: Stack, tmp_path: Path) -> None:
    _deploy(stack, "spawner", "agent_flows.py:spawner")
    agent = _agent(stack)
    pid_file = tmp_path / "pids.json"
    stack.submit("spawner", parameters={"pid_file": str(pid_file)})
    wait_for("the flow to start its child", lambda: pid_file.exists(), 90 + PREFECT_STALL_S)
    time.sleep(0.2)
    pids = json.loads(pid_file.read_text())
    reaper = int(Path(f"/proc/{pids['flow']}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert os.getpgid(pids["child"]) == reaper  # the job's own group, led by its reaper
    try:
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)
        killed_at = time.monotonic()
        wait_for(
            "the job's processes to die with the agent",
            lambda: all(_gone(pids[k]) for k in ("flow", "child")) and _gone(reaper),
            10,
            0.1,
        )
        assert time.monotonic() - killed_at < 10
    finally:
        for pid in (pids["child"], pids["flow"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stack.agents.pop(AGENT, None)


def test_a_restarted_agent_kills_recorded_leftovers_before_taking_work(stack: Stack) -> None:
    _agent(stack)  # registered and approved: its worker's identity is known
    agent = stack.agents.pop(AGENT)
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=60)
    log_path = stack.home / f"agent-{AGENT}.log"
    before = log_path.stat().st_size
    # Leftovers: a process group recorded as a job of the (dead) agent.
    leftover = subprocess.Popen(
        ["sh", "-c", "sleep 1000 & wait"], start_new_session=True, stdin=subprocess.DEVNULL
    )
    try:
        wait_for("the leftover's child", lambda: _group_size(leftover.pid) == 2, 10)
        members = _group_members(leftover.pid)
        groups = JobGroups.for_worker(
            stack.home / "agent", stack.url, f"{stack.slug}-cpu", f"cshare-{AGENT}"
        )
        assert groups.record("leftover", leftover.pid, agent_pid=agent.pid) is not None
        _agent(stack)
        wait_for("the leftovers to be killed", lambda: all(_gone(p) for p in members), 60)
        assert groups.load() == {}
        started = wait_for(
            "the worker to start",
            lambda: "started!" in (text := log_path.read_bytes()[before:].decode()) and text,
            60,
        )
        # (Jobs an earlier test's agent left behind may be named too.)
        killed = re.search(r"a previous agent left running: ([^\n]*)", started)
        assert killed is not None and "leftover" in killed.group(1).split(", "), started
        assert killed.start() < started.index("started!")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leftover.pid, signal.SIGKILL)
        leftover.wait()


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _group_size(pgid: int) -> int:
    return len(_group_members(pgid))
