"""Machines and agents end to end, every piece a real process.

One stack for the module: a Prefect server of its own (so it can be restarted), the API
(`cshare server`, with its dispatcher), and two agents started as a member would start
them, `cshare agent start`, one per machine type (`cpu` with 2 slots, `gpu` with 1).
The tests run in order on that stack:

- a member registers both machines, an admin approves them, jobs of both types run on
  the right machines;
- a machine an admin rejects makes its agent stop, say why and exit 3;
- limits: memory beyond the limit fails naming it, a sleep beyond the runtime is
  stopped near the limit, 2 slots never run 3 jobs at once;
- a run created straight through Prefect (tagged as a removed member's) is refused, with the
  reason on the run in Prefect;
- kill -9 of an agent mid-job: the job ends `crashed` within the offline timeout plus
  a dispatcher cycle, the machine shows offline; the restarted agent reuses its token
  and takes new work, and the crashed job is not run again;
- Prefect restarted while jobs are queued: they all run once it is back, one run each.

Processes are stopped by PID (tests.prefect_server._stop).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.gateway import PrefectGateway, StateType
from tests.http_receiver import Receiver, running_receiver
from tests.prefect_server import (
    PREFECT_STALL_S,
    PrefectServer,
    _b64,
    _free_port,
    _start_server,
    _stop,
    _tail,
)
from tests.smtp_server import SmtpServer, running_smtp_server

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.slow]

HERE = Path(__file__).resolve().parent
CSHARE = str(Path(sys.executable).parent / "cshare")
OFFLINE_AFTER_S = 5
DISPATCHER_INTERVAL_S = 0.5
FINAL = {"completed", "failed", "crashed", "cancelled", "rejected"}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CSHARE_"))}


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@dataclass
class Stack:
    home: Path
    prefect: PrefectServer
    prefect_process: subprocess.Popen[bytes]
    gateway: PrefectGateway
    url: str
    http: httpx.Client
    slug: str = ""
    owner: dict[str, str] = field(default_factory=dict)
    member: dict[str, str] = field(default_factory=dict)
    member_token: str = ""
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    machine_ids: dict[str, str] = field(default_factory=dict)
    api_process: subprocess.Popen[bytes] | None = None
    smtp: SmtpServer | None = None  # the API's SMTP server (members' own job e-mails)
    hooks: Receiver | None = None  # the org's webhook target

    def end_notices(self, job_id: str) -> tuple[list[Any], list[Any]]:
        """The webhook POSTs and e-mails that announced the end of `job_id` so far."""
        assert self.smtp is not None and self.hooks is not None
        with self.hooks.lock:
            posts = [
                r.json
                for r in self.hooks.requests
                if r.json.get("data", {}).get("job_id") == job_id
                and r.json["event"].startswith("job.")
            ]
        with self.smtp.lock:
            mails = [m for m in self.smtp.mails if job_id in m.text]
        return posts, mails

    def assert_one_end_notice(self, job_id: str, event: str) -> None:
        """Exactly one webhook POST and one e-mail for the job's end, of `event`."""
        wait_for(
            f"the end of job {job_id} to be announced",
            lambda: all(self.end_notices(job_id)),
            30,
        )
        time.sleep(3)  # any second announcement (a late report, a Prefect sync) by now
        posts, mails = self.end_notices(job_id)
        assert [p["event"] for p in posts] == [event], posts
        assert len(mails) == 1, [m.subject for m in mails]

    # -- API helpers ---------------------------------------------------------------

    def call(self, method: str, path: str, who: dict[str, str], **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, headers=who, **kw)
        except httpx.TimeoutException:
            # Say where the API is stuck: `cshare server` dumps its threads on SIGUSR1.
            if self.api_process is not None and self.api_process.poll() is None:
                os.kill(self.api_process.pid, signal.SIGUSR1)
                time.sleep(1)
            raise AssertionError(
                f"{method} {path} got no answer in time; the API's log:\n"
                + _tail(self.home / "api.log", 300)
            ) from None

    def ok(self, method: str, path: str, who: dict[str, str], **kw: Any) -> Any:
        r = self.call(method, path, who, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def signup(self, name: str) -> tuple[dict[str, str], str]:
        body = self.ok(
            "POST",
            "/auth/signup",
            {},
            json={"email": f"{name}@example.test", "name": name, "password": f"pw-{name}-x1"},
        )
        return {"Authorization": f"Bearer {body['token']}"}, body["token"]

    def invite(self, who: dict[str, str]) -> None:
        code = self.ok("POST", f"/orgs/{self.slug}/invitations", self.owner, json={"max_uses": 1})[
            "code"
        ]
        self.ok("POST", f"/invitations/{code}/accept", who)

    def machines(self) -> dict[str, dict[str, Any]]:
        items = self.ok("GET", f"/orgs/{self.slug}/machines", self.owner)["items"]
        return {m["name"]: m for m in items}

    def submit(self, deployment: str, who: dict[str, str] | None = None, **body: Any) -> str:
        job = self.ok(
            "POST",
            f"/orgs/{self.slug}/jobs",
            who or self.member,
            json={"deployment": deployment, **body},
        )
        return str(job["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.ok("GET", f"/orgs/{self.slug}/jobs/{job_id}", self.owner)
        return result

    def wait_final(self, job_id: str, timeout: float = 60 + PREFECT_STALL_S) -> dict[str, Any]:
        result: dict[str, Any] = wait_for(
            f"job {job_id} to end",
            lambda: (j := self.job(job_id))["state"] in FINAL and j,
            timeout,
        )
        return result

    # -- agents ----------------------------------------------------------------------

    def start_agent(
        self,
        name: str,
        machine_type: str,
        slots: int,
        *,
        token: str | None = None,
        org: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """`cshare agent start` as `token`'s holder (default: the member) in `org`,
        with `extra_env` in its environment."""
        env = _clean_env()
        env.update(extra_env or {})
        env.update(
            CSHARE_API_URL=self.url,
            CSHARE_TOKEN=token or self.member_token,
            CSHARE_ORG=org or self.slug,
            CSHARE_CONFIG=str(self.home / "cli.json"),
            CSHARE_AGENT_HOME=str(self.home / "agent"),
            PREFECT_HOME=str(self.home / f"prefect-{name}"),
            CSHARE_POLL_INTERVAL_S="1",
        )
        log = (self.home / f"agent-{name}.log").open("ab")
        process = subprocess.Popen(
            [
                CSHARE,
                "agent",
                "start",
                "--name",
                name,
                "--machine-type",
                machine_type,
                "--slots",
                str(slots),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=HERE,
        )
        self.agents[name] = process
        return process

    def agent_log(self, name: str) -> str:
        return _tail(self.home / f"agent-{name}.log", 60)

    def diagnostics(self) -> dict[str, str]:
        """The processes' logs, for a failure report (tests/e2e/conftest.py)."""
        prefect_logs = sorted((self.prefect.home / "server").glob("*.log"))
        sections = {"API log (tail)": _tail(self.home / "api.log", 150)}
        for path in prefect_logs:
            sections[f"Prefect server {path.name} (tail)"] = _tail(path, 80)
        for path in sorted(self.home.glob("agent-*.log")):
            sections[f"{path.stem} log (tail)"] = _tail(path, 60)
        return sections


def _start_api(
    home: Path,
    prefect: PrefectServer,
    smtp: SmtpServer,
    extra_env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    port = port or _free_port()
    env = _clean_env()
    env.update(extra_env or {})
    env.update({f"CSHARE_{k.upper()}": str(v) for k, v in smtp.settings().items()})
    env.update(
        CSHARE_HOME=str(home / "api"),
        CSHARE_PREFECT_API_URL=prefect.api_url,
        CSHARE_PREFECT_AUTH_STRING=prefect.auth_string,
        CSHARE_ARGON2_TIME_COST="1",
        CSHARE_ARGON2_MEMORY_KIB="1024",
        CSHARE_WORK_POOL_TYPE="cshare",
        # The session's Prefect (SQLite) stalls past the 10 s request budget on a loaded CI
        # machine (a deploy got 503); the budget itself is tested in test_gateway.py.
        CSHARE_PREFECT_REQUEST_BUDGET_S="60",
        CSHARE_DISPATCHER_ENABLED="true",
        CSHARE_DISPATCHER_INTERVAL_S=str(DISPATCHER_INTERVAL_S),
        CSHARE_AGENT_HEARTBEAT_INTERVAL_S="1",
        # Ends of jobs are announced to a local webhook and by e-mail (loopback allowed).
        CSHARE_NOTIFICATIONS_ENABLED="true",
        CSHARE_NOTIFICATIONS_ALLOW_LOOPBACK="true",
        CSHARE_NOTIFICATIONS_POLL_S="0.5",
        # The data store emulators (moto, Azurite, GCS) listen on loopback.
        CSHARE_STORE_ENDPOINT_ALLOWLIST="127.0.0.1/32",
    )
    log = (home / "api.log").open("ab")
    process = subprocess.Popen(
        [CSHARE, "server", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited:\n{_tail(home / 'api.log')}")
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the API", healthy, 180, 0.2)  # a ceiling: loaded CI machines are slow
    return process, url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("agents-e2e")
    receivers = contextlib.ExitStack()
    smtp = receivers.enter_context(running_smtp_server())
    hooks = receivers.enter_context(running_receiver())
    prefect_process, prefect = _start_server(home)
    api_process: subprocess.Popen[bytes] | None = None
    s: Stack | None = None
    try:
        api_process, url = _start_api(home, prefect, smtp)
        s = Stack(
            home=home,
            prefect=prefect,
            prefect_process=prefect_process,
            gateway=PrefectGateway(prefect.api_url, prefect.auth_string),
            url=url,
            # Above the API's 60 s Prefect budget (set in _start_api): it answers first.
            http=httpx.Client(base_url=url + "/api/v1", timeout=90),
            api_process=api_process,
            smtp=smtp,
            hooks=hooks,
        )
        s.owner, _ = s.signup(f"owner{uuid.uuid4().hex[:6]}")
        s.slug = s.ok("POST", "/orgs", s.owner, json={"name": f"Lab {uuid.uuid4().hex[:6]}"})[
            "slug"
        ]
        types = {t: {"max_scale": 10, "per_user_quota": 10} for t in ("cpu", "gpu")}
        s.ok(
            "PUT",
            f"/orgs/{s.slug}/settings",
            s.owner,
            json={
                "machines": {"approval_required": True, "offline_after_s": OFFLINE_AFTER_S},
                "limits": {"organization": {"machine_types": types}},
            },
        )
        for name, entrypoint, machine_type in (
            ("trivial", "agent_flows.py:trivial", "cpu"),
            ("hog", "agent_flows.py:hog", "cpu"),
            ("sleeper", "agent_flows.py:sleeper", "cpu"),
            ("gpu-trivial", "agent_flows.py:trivial", "gpu"),
        ):
            s.ok(
                "POST",
                f"/orgs/{s.slug}/deployments",
                s.owner,
                json={
                    "name": name,
                    "entrypoint": entrypoint,
                    "machine_type": machine_type,
                    "path": str(HERE),
                },
            )
        s.ok(
            "PUT",
            f"/orgs/{s.slug}/notifications",
            s.owner,
            json={
                "targets": [
                    {
                        "kind": "webhook",
                        "url": hooks.url,
                        "secret": "s" * 24,
                        "events": ["job.failed"],
                    }
                ]
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
        if s is not None and s.prefect_process is not prefect_process:
            _stop(s.prefect_process)  # the server the restart test started
        receivers.close()


def _state_types(stack: Stack, flow_run_id: uuid.UUID) -> list[str]:
    """Every state the run has been in, oldest first (Prefect's state history)."""
    r = httpx.get(
        f"{stack.prefect.api_url}/flow_run_states/",
        params={"flow_run_id": str(flow_run_id)},
        auth=None,
        headers={"Authorization": "Basic " + _b64(stack.prefect.auth_string)},
        timeout=10,
    )
    r.raise_for_status()
    return [state["type"] for state in r.json()]


def _run_of(stack: Stack, job_id: str) -> Any:
    run_id = stack.job(job_id)["flow_run_id"]
    return stack.gateway.read_flow_run(uuid.UUID(run_id))


# ------------------------------------------------------------------------ the tests


AGENTS = {"cpu-box": ("cpu", 2), "gpu-box": ("gpu", 1)}


def ensure_agents(stack: Stack) -> dict[str, dict[str, Any]]:
    """Both agents running, registered, approved and online.

    The tests share the module's stack and usually run in file order, but pytest-xdist
    may hand some of them to another worker (another stack): every test that needs the
    agents asks for them here. Returns the machines as they were when first seen (a
    fresh registration shows them `pending`).
    """
    for name, (machine_type, slots) in AGENTS.items():
        process = stack.agents.get(name)
        if process is None or process.poll() is not None:
            stack.start_agent(name, machine_type, slots)
    first = wait_for(
        "the agents to register",
        lambda: (m := stack.machines()).keys() >= AGENTS.keys() and m,
        60,
    )
    for name in AGENTS:
        stack.machine_ids[name] = first[name]["id"]
        if first[name]["status"] == "pending":
            stack.ok(
                "POST", f"/orgs/{stack.slug}/machines/{first[name]['id']}/approve", stack.owner
            )
    wait_for(
        "the agents to be online",
        lambda: all(stack.machines()[n]["health"] == "online" for n in AGENTS),
        60,
    )
    return dict(first)


def test_member_registers_admin_approves_jobs_run_on_the_right_machines(stack: Stack) -> None:
    fresh = not stack.machine_ids
    if fresh:
        # Registered by the member's agents, pending, and pending machines take no work.
        for name, (machine_type, slots) in AGENTS.items():
            stack.start_agent(name, machine_type, slots)
        machines = wait_for(
            "both machines to register", lambda: len(m := stack.machines()) == 2 and m, 60
        )
        assert {m["status"] for m in machines.values()} == {"pending"}
        early = stack.submit("trivial")
        time.sleep(3)
        assert stack.job(early)["state"] not in FINAL | {"running"}
    else:
        early = stack.submit("trivial")
    ensure_agents(stack)  # the admin approves both
    cpu_job = stack.wait_final(early, 90 + PREFECT_STALL_S)
    gpu_job = stack.wait_final(stack.submit("gpu-trivial"))
    assert cpu_job["state"] == "completed", cpu_job
    assert gpu_job["state"] == "completed", gpu_job
    assert cpu_job["machine"]["id"] == stack.machine_ids["cpu-box"]
    assert gpu_job["machine"]["id"] == stack.machine_ids["gpu-box"]
    online = stack.machines()
    assert online["cpu-box"]["health"] == "online"
    assert online["gpu-box"]["hardware"]["cpu_count"] >= 1


def test_a_rejected_machine_stops_its_agent_with_the_reason(stack: Stack) -> None:
    agent = stack.start_agent("rogue-box", "cpu", 1)
    machine = wait_for("rogue-box to register", lambda: stack.machines().get("rogue-box"), 30)
    stack.ok(
        "POST",
        f"/orgs/{stack.slug}/machines/{machine['id']}/reject",
        stack.owner,
        json={"reason": "not a lab machine"},
    )
    code = agent.wait(timeout=30)
    assert code == 3  # EXIT_ENDED (docs/agents.md)
    assert "not a lab machine" in stack.agent_log("rogue-box")
    del stack.agents["rogue-box"]


def test_memory_beyond_the_limit_fails_naming_the_limit(stack: Stack) -> None:
    ensure_agents(stack)
    job_id = stack.submit("hog", parameters={"mb": 1200}, resources={"memory_mb": 400})
    # The engine reports its MemoryError first; the agent's correction (the limit's
    # name, in Prefect and in the ledger) follows within a moment.
    job = wait_for(
        "the job to fail naming its limit",
        lambda: (j := stack.job(job_id))["state"] == "failed" and "400 MB" in j["reason"] and j,
        60 + PREFECT_STALL_S,
    )
    assert "memory limit" in job["reason"]
    run = _run_of(stack, job_id)
    assert run.state_type is StateType.FAILED and "400 MB" in (run.message or "")
    # The engine's own failure and the agent's limit report are one end: one notice each
    # way, and the final state is the kill's.
    stack.assert_one_end_notice(job_id, "job.failed")
    final = stack.job(job_id)
    assert final["state"] == "failed" and "400 MB" in final["reason"], final
    # The same flow within its limit succeeds.
    ok = stack.wait_final(stack.submit("hog", parameters={"mb": 50}, resources={"memory_mb": 400}))
    assert ok["state"] == "completed", ok


def test_a_sleep_beyond_the_runtime_is_stopped_near_the_limit(stack: Stack) -> None:
    ensure_agents(stack)
    job_id = stack.submit("sleeper", parameters={"seconds": 120}, resources={"max_runtime_s": 4})
    wait_for(
        "the sleeper to run",
        lambda: stack.job(job_id)["state"] == "running",
        60 + PREFECT_STALL_S,
    )
    run = wait_for(
        "the run to fail at its runtime",
        lambda: (r := _run_of(stack, job_id)).state_type is StateType.FAILED and r,
        40 + PREFECT_STALL_S,
    )
    assert "exceeded max runtime 4 s" in (run.message or "")
    assert run.total_run_time < 4 + 5, run.total_run_time  # SIGTERM at 4 s, SIGKILL by 7 s
    job = wait_for(
        "the job to fail",
        lambda: "max runtime" in (j := stack.job(job_id))["reason"] and j,
        20 + PREFECT_STALL_S,
    )
    assert job["state"] == "failed"
    # Reported by the agent before it stopped the process: the engine's Crashed that
    # followed is a note, not a second end.
    stack.assert_one_end_notice(job_id, "job.failed")
    final = stack.job(job_id)
    assert (final["state"], final["rule"]) == ("failed", "runtime_limit"), final


def test_two_slots_never_run_three_jobs(stack: Stack) -> None:
    ensure_agents(stack)
    ids = [stack.submit("sleeper", parameters={"seconds": 4}) for _ in range(5)]
    runs: list[uuid.UUID] = []
    peak = 0
    # Slots are what counts here, not speed.
    deadline = time.monotonic() + 90 + PREFECT_STALL_S
    while time.monotonic() < deadline:
        if not runs:
            found = [stack.job(i)["flow_run_id"] for i in ids]
            runs = [uuid.UUID(r) for r in found] if all(found) else []
        states = [r.state_type for r in stack.gateway.read_flow_runs(runs)] if runs else []
        peak = max(peak, sum(1 for st in states if st is StateType.RUNNING))
        if runs and len(states) == len(runs) and all(st.is_final for st in states):
            break
        time.sleep(0.1)
    assert peak <= 2, f"{peak} runs at once on a machine with 2 slots"
    assert peak == 2, "the two slots were never used together"
    assert [stack.wait_final(i)["state"] for i in ids] == ["completed"] * 5


def test_a_run_made_straight_in_prefect_is_refused_with_the_reason(stack: Stack) -> None:
    ensure_agents(stack)
    bob_headers, _ = stack.signup(f"bob{uuid.uuid4().hex[:6]}")
    stack.invite(bob_headers)
    bob = stack.ok("GET", "/me", bob_headers)
    stack.ok("DELETE", f"/orgs/{stack.slug}/members/{bob['id']}", stack.owner)
    deployment = stack.ok("GET", f"/orgs/{stack.slug}/deployments", stack.owner)["items"]
    trivial = next(d for d in deployment if d["name"] == "trivial")
    # Straight through Prefect (as someone holding the Prefect secret would).
    run = stack.gateway.create_flow_run(
        uuid.UUID(trivial["prefect_deployment_id"]),
        idempotency_key=str(uuid.uuid4()),
        tags=[f"org:{stack.slug}", f"user:{bob['name']}", "type:cpu"],
    )
    final = wait_for(
        "the run to be refused",
        lambda: (r := stack.gateway.read_flow_run(run.id)).is_final and r,
        30 + PREFECT_STALL_S,
    )
    assert final.state_type is StateType.CANCELLED and final.state_name == "Rejected"
    assert "did not create or admit this run" in (final.message or "")
    assert "RUNNING" not in _state_types(stack, run.id)  # it never ran


def test_kill_9_of_an_agent_mid_job_crashes_the_job_and_frees_the_slot(stack: Stack) -> None:
    ensure_agents(stack)
    job_id = stack.submit("sleeper", parameters={"seconds": 300})
    wait_for(
        "the sleeper to run",
        lambda: stack.job(job_id)["state"] == "running",
        60 + PREFECT_STALL_S,
    )
    agent = stack.agents["cpu-box"]
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(timeout=10)
    killed_at = time.monotonic()
    job = wait_for(
        "the job to crash",
        lambda: (j := stack.job(job_id))["state"] == "crashed" and j,
        OFFLINE_AFTER_S + 20,
        0.2,
    )
    took = time.monotonic() - killed_at
    # Offline timeout + one dispatcher cycle, plus the time it takes to notice.
    assert took <= OFFLINE_AFTER_S + 2 * DISPATCHER_INTERVAL_S + 4, took
    assert "offline" in job["reason"] or "agent" in job["reason"], job["reason"]
    assert stack.machines()["cpu-box"]["health"] == "offline"
    assert stack.machines()["cpu-box"]["free_slots"] == 0
    # The agent comes back with its stored token: the same machine, no new registration.
    before = set(stack.machines())
    stack.start_agent("cpu-box", "cpu", 2)
    wait_for("cpu-box online", lambda: stack.machines()["cpu-box"]["health"] == "online", 60)
    assert set(stack.machines()) == before
    again = stack.wait_final(stack.submit("trivial"))
    assert again["state"] == "completed"
    assert stack.job(job_id)["state"] == "crashed"  # not run again


def test_jobs_queued_while_prefect_restarts_run_once_it_is_back(stack: Stack) -> None:
    ensure_agents(stack)
    trivial = next(
        d
        for d in stack.ok("GET", f"/orgs/{stack.slug}/deployments", stack.owner)["items"]
        if d["name"] == "trivial"
    )
    deployment_id = uuid.UUID(trivial["prefect_deployment_id"])
    runs_before = stack.gateway.count_flow_runs(deployment_id=deployment_id)
    port = int(stack.prefect.api_url.rsplit(":", 1)[1].split("/")[0])
    _stop(stack.prefect_process)
    ids = [stack.submit("trivial") for _ in range(3)]  # accepted while Prefect is down
    time.sleep(2)
    stack.prefect_process = _restart_prefect(stack, port)
    jobs = [stack.wait_final(i, 120 + PREFECT_STALL_S) for i in ids]
    assert [j["state"] for j in jobs] == ["completed"] * 3
    # One run per job, none lost, none doubled.
    assert len({j["flow_run_id"] for j in jobs}) == 3
    assert stack.gateway.count_flow_runs(deployment_id=deployment_id) == runs_before + 3


def _restart_prefect(stack: Stack, port: int) -> subprocess.Popen[bytes]:
    """The same Prefect server (home, database, secret) on the same port."""
    server_home = stack.prefect.home / "server"
    env = _clean_env()
    env.update(
        PREFECT_HOME=str(server_home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{server_home}/prefect.db",
        PREFECT_SERVER_API_AUTH_STRING=stack.prefect.auth_string,
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="1",
        PREFECT_LOGGING_SERVER_LEVEL="WARNING",
    )
    log = (server_home / "restart.log").open("ab")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=server_home,
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"{stack.prefect.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("Prefect to come back", healthy, 90, 0.3)
    return process
