"""Code bundles end to end: the code travels from a member's project to another machine.

Every piece is a real process: a Prefect server, the API (`cshare server`), `cshare
deploy` and `cshare job ...` run as a member would from a fresh project directory
outside the repository, and an agent (`cshare agent start`) whose working directory and
HOME hold no project code. The test shows, in order:

- deploy packs the project (flow.py importing helper.py; a .gitignore'd 5 MB file
  stays behind), uploads it once, prints its digest, file count and size;
- the job runs on the agent with the right output, and the ignored file is on no disk
  of the machine; `cshare job show` shows the code and its fetch time;
- helper changed and redeployed: the new job runs the new code; `cshare job rerun` of
  the old job runs the old code, side by side with a job of the new version;
- the same content deploys to the same digest (nothing uploaded again).

Processes are stopped by PID (tests.prefect_server._stop).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.gateway import PrefectGateway
from tests.e2e.test_agents import CSHARE, Stack, _clean_env, _start_api, wait_for
from tests.prefect_server import PREFECT_STALL_S, _start_server, _stop
from tests.smtp_server import running_smtp_server
from tests.unit.test_pyenv import build_wheel

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIG = 5 * 1024 * 1024

FLOW = r"""
import os
import time
from pathlib import Path

from prefect import flow

import helper


@flow
def shipped(out_dir: str, pause_s: float = 0.0) -> str:
    started = time.time()
    time.sleep(pause_s)
    result = (
        f"VALUE={helper.VALUE} big_present={Path('big.bin').exists()} "
        f"in_code_dir={Path.cwd() == Path(os.environ['CSHARE_CODE_DIR'])}"
    )
    # The test runs on the same host as the agent: it reads what the job wrote.
    out = Path(out_dir) / (os.environ["CSHARE_JOB_ID"] + ".txt")
    out.write_text(f"{result}\n{started} {time.time()}\n")
    return result
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("bundles-e2e")) as s:
        yield s


@contextlib.contextmanager
def running_stack(home: Path, api_env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """Prefect, the API (with `api_env` added to its environment), an org whose `cpu`
    machines join without approval, and a member; no agent yet."""
    receivers = contextlib.ExitStack()
    smtp = receivers.enter_context(running_smtp_server())
    prefect_process, prefect = _start_server(home)
    api_process: subprocess.Popen[bytes] | None = None
    s: Stack | None = None
    try:
        api_process, url = _start_api(home, prefect, smtp, api_env)
        s = Stack(
            home=home,
            prefect=prefect,
            prefect_process=prefect_process,
            gateway=PrefectGateway(prefect.api_url, prefect.auth_string),
            url=url,
            http=httpx.Client(base_url=url + "/api/v1", timeout=30),
            api_process=api_process,
            smtp=smtp,
        )
        s.owner, _ = s.signup(f"owner{uuid.uuid4().hex[:6]}")
        s.slug = s.ok("POST", "/orgs", s.owner, json={"name": f"Ship {uuid.uuid4().hex[:6]}"})[
            "slug"
        ]
        s.ok(
            "PUT",
            f"/orgs/{s.slug}/settings",
            s.owner,
            json={
                "machines": {"approval_required": False},
                "limits": {
                    "organization": {
                        "machine_types": {"cpu": {"max_scale": 10, "per_user_quota": 10}}
                    }
                },
            },
        )
        s.member, s.member_token = s.signup(f"member{uuid.uuid4().hex[:6]}")
        s.invite(s.member)
        yield s
    finally:
        if s is not None:
            for process in s.agents.values():
                _stop(process)
            s.http.close()
            s.gateway.close()
        if api_process is not None:
            _stop(api_process)
        _stop(prefect_process)
        receivers.close()


def _cli_env(stack: Stack, home: Path) -> dict[str, str]:
    env = _clean_env()
    env.update(
        # Our code (this worktree), whatever the console script's install points at.
        PYTHONPATH=str(REPO),
        CSHARE_API_URL=stack.url,
        CSHARE_TOKEN=stack.member_token,
        CSHARE_ORG=stack.slug,
        CSHARE_CONFIG=str(home / "cli.json"),
        HOME=str(home),
    )
    return env


def cshare(stack: Stack, cwd: Path, *args: str) -> str:
    (stack.home / "member-home").mkdir(exist_ok=True)
    done = subprocess.run(
        [CSHARE, *args],
        cwd=cwd,
        env=_cli_env(stack, stack.home / "member-home"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"cshare {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def make_project(root: Path, value: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'shipped'\nversion = '0'\n")
    (root / ".gitignore").write_text("big.bin\n__pycache__/\n")
    (root / "flow.py").write_text(FLOW)
    (root / "helper.py").write_text(f"VALUE = {value}\n")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    return root


def deploy(stack: Stack, project: Path) -> tuple[str, str]:
    """`cshare deploy flow.py:shipped`: (its output, the deployment's digest)."""
    out = cshare(stack, project, "deploy", "flow.py:shipped", "--name", "shipped")
    dep = stack.ok("GET", f"/orgs/{stack.slug}/deployments/shipped", stack.member)
    assert dep["code"]["kind"] == "bundle"
    assert dep["entrypoint"] == "flow.py:shipped"
    return out, str(dep["code"]["digest"])


def wheels_dir(stack: Stack) -> Path:
    wheels = stack.home / "wheels"
    wheels.mkdir(exist_ok=True)
    return wheels


def start_bare_agent(stack: Stack, name: str) -> subprocess.Popen[bytes]:
    """An agent in an empty directory with an empty HOME: no project code anywhere."""
    bare = stack.home / f"bare-{name}"
    (bare / "home").mkdir(parents=True)
    (bare / "cwd").mkdir()
    env = _cli_env(stack, bare / "home")
    env.update(
        CSHARE_AGENT_HOME=str(stack.home / "agent"),
        PREFECT_HOME=str(bare / "prefect"),
        CSHARE_POLL_INTERVAL_S="1",
        # Bundles' requirements install from the test's own wheels, never an index.
        CSHARE_AGENT_UV_FIND_LINKS=str(wheels_dir(stack)),
        CSHARE_AGENT_UV_NO_INDEX="1",
    )
    env.pop("CSHARE_FLOWS_DIR", None)
    log = (stack.home / f"agent-{name}.log").open("ab")
    process = subprocess.Popen(
        [CSHARE, "agent", "start", "--name", name, "--machine-type", "cpu", "--slots", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=bare / "cwd",
    )
    stack.agents[name] = process
    wait_for(
        "the agent to be online",
        lambda: (m := stack.machines().get(name)) is not None and m["health"] == "online",
        90,
    )
    return process


def result_of(stack: Stack, job_id: str) -> tuple[str, float, float]:
    """What the job wrote: its result line, and when it started and ended its work."""
    job = stack.wait_final(job_id, timeout=120 + PREFECT_STALL_S)
    assert job["state"] == "completed", (job, stack.agent_log("ship-box"))
    result, times = (stack.home / "out" / f"{job_id}.txt").read_text().splitlines()
    start, end = (float(x) for x in times.split())
    return result, start, end


def test_code_travels_to_a_bare_machine(stack: Stack, tmp_path_factory: Any) -> None:
    outside = tmp_path_factory.mktemp("member-project")
    assert not outside.resolve().is_relative_to(REPO)
    project = make_project(outside / "proj", value=1)

    out1, digest1 = deploy(stack, project)
    short = digest1[:19]
    match = re.search(
        r"Code bundle (sha256:[0-9a-f]{12}) .*: (\d+) files, ([\d.]+ KB) \((\w+)", out1
    )
    assert match is not None, out1
    assert match.group(1) == short and match.group(4) == "uploaded"
    assert int(match.group(2)) == 4  # pyproject.toml, .gitignore, flow.py, helper.py
    bundle = stack.ok("GET", f"/orgs/{stack.slug}/bundles/{digest1}", stack.member)
    assert bundle["size"] < 64 * 1024  # the 5 MB file stayed behind

    start_bare_agent(stack, "ship-box")
    out_dir = stack.home / "out"
    out_dir.mkdir()
    params = {"out_dir": str(out_dir)}
    # The rerun keeps these parameters: its pause overlaps it with the new version's job.
    job1 = stack.submit("shipped", parameters={**params, "pause_s": 3})
    assert result_of(stack, job1)[0] == "VALUE=1 big_present=False in_code_dir=True"
    # The ignored file reached no disk of the machine (its cache or any job's copy).
    agent_home = stack.home / "agent"
    assert list(agent_home.rglob("big.bin")) == []
    assert list((agent_home / "code-cache" / "objects").glob("*/helper.py"))

    # What the job used, measured on the machine, is on its lineage.
    used = wait_for(
        "the resources the job used",
        lambda: stack.ok("GET", f"/orgs/{stack.slug}/jobs/{job1}/lineage", stack.member)["job"][
            "resources"
        ]["used"],
        30,
    )
    assert used["wall_s"] >= 3 and used["cpu_s"] > 0 and used["max_rss_mb"] > 10, used
    assert "CPU s" in cshare(stack, outside, "lineage", "--job", job1)

    shown = wait_for(
        "the code fetch time in `cshare job show`",
        lambda: "code fetch:" in (o := cshare(stack, outside, "job", "show", job1)) and o,
        30,
    )
    assert short in shown and "(downloaded)" in shown, shown

    # A new version: the next job runs it; a rerun of the old job runs the old code,
    # both at once on the one machine (2 slots).
    (project / "helper.py").write_text("VALUE = 2\n")
    _out2, digest2 = deploy(stack, project)
    assert digest2 != digest1
    job2 = stack.submit("shipped", parameters={**params, "pause_s": 8})
    rerun_out = cshare(stack, outside, "job", "rerun", job1)
    rerun_id = re.search(r"Job ([0-9a-f-]{36})", rerun_out)
    assert rerun_id is not None, rerun_out
    job3 = rerun_id.group(1)
    result2, start2, end2 = result_of(stack, job2)
    result3, start3, end3 = result_of(stack, job3)
    assert result2 == "VALUE=2 big_present=False in_code_dir=True"
    assert result3 == "VALUE=1 big_present=False in_code_dir=True"
    assert start3 < end2 and start2 < end3, "the two versions ran side by side"
    assert stack.job(job3)["code"]["digest"] == digest1
    assert stack.job(job2)["code"]["digest"] == digest2
    shown3 = wait_for(
        "the rerun's code fetch time",
        lambda: "code fetch:" in (o := cshare(stack, outside, "job", "show", job3)) and o,
        30,
    )
    assert short in shown3 and "(cached)" in shown3, shown3

    # Same content, same digest: a fresh copy of the project (other mtimes) deploys to
    # digest2 and uploads nothing.
    time.sleep(1.1)
    copy = make_project(outside / "copy", value=2)
    out4, digest4 = deploy(stack, copy)
    assert digest4 == digest2
    assert "already there" in out4, out4


DEPS_FLOW = r"""
import os
import sys
from pathlib import Path

from prefect import flow


@flow
def with_deps(out_dir: str) -> str:
    import cshare_testdep

    out = Path(out_dir) / (os.environ["CSHARE_JOB_ID"] + ".txt")
    out.write_text(f"answer={cshare_testdep.answer()} prefix={sys.prefix}\n0 0\n")
    return "ok"
"""


def test_a_bundles_requirements_run_in_their_own_environment(
    stack: Stack, tmp_path_factory: Any
) -> None:
    build_wheel(wheels_dir(stack), "cshare_testdep", "1.0", "def answer():\n    return 42\n")
    if "ship-box" not in stack.agents:
        start_bare_agent(stack, "ship-box")
    (stack.home / "out").mkdir(exist_ok=True)
    project = tmp_path_factory.mktemp("deps-project")
    (project / "pyproject.toml").write_text("[project]\nname = 'deps'\nversion = '0'\n")
    (project / "flow.py").write_text(DEPS_FLOW)
    (project / "requirements.txt").write_text("cshare_testdep==1.0\n")
    cshare(stack, project, "deploy", "flow.py:with_deps", "--name", "with-deps")
    job = stack.submit("with-deps", parameters={"out_dir": str(stack.home / "out")})
    result, _, _ = result_of(stack, job)
    assert result.startswith("answer=42 prefix="), result
    prefix = Path(result.split("prefix=", 1)[1])
    assert prefix.is_relative_to(stack.home / "agent"), prefix  # the machine's env cache
    shown = wait_for(
        "the requirements environment in `cshare job show`",
        lambda: "requirements env" in (o := cshare(stack, project, "job", "show", job)) and o,
        30,
    )
    assert prefix.name[:12] in shown, shown

    # A requirement nobody can install fails the job, with uv's reason in its log.
    (project / "requirements.txt").write_text("cshare_testdep==9.9\n")
    cshare(stack, project, "deploy", "flow.py:with_deps", "--name", "with-deps")
    failed = stack.wait_final(
        stack.submit("with-deps", parameters={"out_dir": str(stack.home / "out")}),
        timeout=120 + PREFECT_STALL_S,
    )
    assert failed["state"] in ("failed", "crashed"), failed
    logs = wait_for(
        "uv's message in the job log",
        lambda: (
            "cshare-testdep" in (o := cshare(stack, project, "job", "logs", failed["id"])) and o
        ),
        30,
    )
    assert "Installing the bundle's requirements failed" in logs, logs
