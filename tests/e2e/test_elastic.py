"""Elastic machine types end to end (docs/elastic.md), every piece a real process.

The API (`cshare server`, dispatcher and scaler) on the session's Prefect server; the
`cpu` type gets the `process` provider with min_scale 1, max_scale 3 and a 30 s grace.
Its agents are real `cshare agent start` subprocesses the scaler starts with their own
machine tokens. Then:

- the minimum: one machine starts and comes online with no work;
- a burst of 9 jobs: two more start (3, never more), all 9 complete, on 3 machines;
- the grace: about 30 s after the last job ended, only 1 machine is left; the stopped
  machines' tokens are retired, every start and stop is in the audit log and the
  overview;
- a crash: the last machine's agent killed (-9) is replaced by a new one;
- detach: the provider's machines stop and the provider goes.

Processes are stopped by PID (tests.prefect_server._stop; the agents' pid files).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.gateway import PrefectGateway
from tests.e2e.test_agents import HERE, Stack, _start_api, wait_for
from tests.prefect_server import PrefectServer, _free_port, _stop, _tail
from tests.smtp_server import running_smtp_server

# About 90 s on an idle machine; the timeout leaves room for a CI box under load.
pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("elastic"),
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

GRACE_S = 30
JOBS = 9
JOB_SECONDS = 2


def _agent_pids(root: Path) -> list[int]:
    pids = []
    for pid_file in root.glob("**/agent.pid"):
        with contextlib.suppress(ValueError, OSError):
            pids.append(int(pid_file.read_text().strip()))
    return pids


def _kill_agents(root: Path) -> None:
    for pid in _agent_pids(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


class Elastic(Stack):
    """test_agents' Stack plus the scaler's view of the `cpu` type."""

    def scaling(self) -> dict[str, Any]:
        body: dict[str, Any] = self.ok(
            "GET", f"/orgs/{self.slug}/machine-types/cpu/scaling", self.owner
        )
        return body

    def provisioned(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.scaling()["machines"]
        return items

    def audit(self, action: str) -> list[dict[str, Any]]:
        items = self.ok("GET", f"/orgs/{self.slug}/audit", self.owner, params={"limit": 500})
        return [e for e in items["items"] if e["action"] == action]

    def diagnostics(self) -> dict[str, str]:
        sections = super().diagnostics()
        for path in sorted((self.home / "elastic").glob("**/*.log")):
            sections[f"elastic {path.name} (tail)"] = _tail(path, 40)
        return sections


@pytest.fixture
def elastic(prefect_server: PrefectServer, tmp_path: Path) -> Iterator[Elastic]:
    home = tmp_path
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with running_smtp_server() as smtp:
        api_process, url = _start_api(
            home,
            prefect_server,
            smtp,
            {
                "CSHARE_ELASTIC_PROCESS_ENABLED": "true",
                "CSHARE_ELASTIC_INTERVAL_S": "1",
                "CSHARE_ELASTIC_API_URL": url,
                "CSHARE_ELASTIC_WORK_DIR": str(home / "elastic"),
                "CSHARE_NOTIFICATIONS_ENABLED": "false",
            },
            port=port,
        )
        s = Elastic(
            home=home,
            prefect=prefect_server,
            prefect_process=None,  # type: ignore[arg-type]  # the session's server
            gateway=PrefectGateway(prefect_server.api_url, prefect_server.auth_string),
            url=url,
            http=httpx.Client(base_url=url + "/api/v1", timeout=30),
            api_process=api_process,
        )
        try:
            s.owner, _ = s.signup(f"owner{uuid.uuid4().hex[:6]}")
            s.slug = s.ok(
                "POST", "/orgs", s.owner, json={"name": f"Elastic {uuid.uuid4().hex[:6]}"}
            )["slug"]
            s.ok(
                "PUT",
                f"/orgs/{s.slug}/settings",
                s.owner,
                json={
                    "machines": {"offline_after_s": 5},
                    "limits": {
                        "organization": {
                            "machine_types": {"cpu": {"max_scale": 20, "per_user_quota": 20}}
                        }
                    },
                },
            )
            s.ok(
                "POST",
                f"/orgs/{s.slug}/deployments",
                s.owner,
                json={
                    "name": "sleeper",
                    "entrypoint": "agent_flows.py:sleeper",
                    "machine_type": "cpu",
                    "path": str(HERE),
                },
            )
            yield s
        finally:
            _stop(api_process)
            _kill_agents(home / "elastic")
            s.http.close()
            s.gateway.close()


def _count_over_time(s: Elastic, until: Any, timeout: float) -> tuple[int, Any]:
    """Poll the provider's machines until `until()` is truthy; (most machines seen, result)."""
    most = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        most = max(most, len(s.provisioned()))
        done = until()
        if done:
            return most, done
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s; machines: {s.provisioned()}")


def test_burst_scales_to_max_then_back_to_min_after_grace(elastic: Elastic) -> None:
    s = elastic
    started = time.monotonic()
    body = s.ok(
        "PUT",
        f"/orgs/{s.slug}/machine-types/cpu/scaling",
        s.owner,
        json={
            "provider": "process",
            "min_scale": 1,
            "max_scale": 3,
            "grace_period_s": GRACE_S,
            "flows_dir": str(HERE),
        },
    )
    assert (body["min_scale"], body["max_scale"], body["grace_period_s"]) == (1, 3, GRACE_S)

    # The minimum, with no work at all.
    first = wait_for(
        "the minimum machine to be online",
        lambda: (m := s.provisioned()) and m[0]["online"] and m[0]["phase"] == "ready" and m,
        120,
    )
    assert len(first) == 1
    ready_s = time.monotonic() - started

    # The burst.
    burst = time.monotonic()
    jobs = [s.submit("sleeper", s.owner, parameters={"seconds": JOB_SECONDS}) for _ in range(JOBS)]

    def all_done() -> list[dict[str, Any]] | None:
        found = [s.job(j) for j in jobs]
        return (
            found if all(j["state"] in ("completed", "failed", "crashed") for j in found) else None
        )

    most, done = _count_over_time(s, all_done, 480)
    burst_s = time.monotonic() - burst
    assert [j["state"] for j in done] == ["completed"] * JOBS, [j.get("reason") for j in done]
    assert most == 3, most
    ran_on = {j["machine"]["name"] for j in done}
    assert len(ran_on) == 3, ran_on
    assert len(s.audit("machine.scaled_up")) == 3

    # The grace: back to the minimum about GRACE_S after the last job ended, and no
    # machine stopped within GRACE_S of its own last job.
    last_end = max(datetime.fromisoformat(j["ended_at"]) for j in done)
    most_after, _ = _count_over_time(s, lambda: len(s.provisioned()) == 1, GRACE_S + 90)
    after_last = (datetime.now(UTC) - last_end).total_seconds()
    assert most_after <= 3
    assert after_last <= GRACE_S + 45, after_last
    stopped = s.audit("machine.scaled_down")
    assert len(stopped) == 2
    assert all(e["after"]["rule"] == "stop_after_grace" for e in stopped)
    for event in stopped:
        name = event["before"]["name"]
        own_last = max(
            datetime.fromisoformat(j["ended_at"]) for j in done if j["machine"]["name"] == name
        )
        idle_for = (datetime.fromisoformat(event["at"]) - own_last).total_seconds()
        assert idle_for >= GRACE_S - 1, (name, idle_for)
    # Their tokens died with them: only the remaining machine is listed.
    listed = s.ok("GET", f"/orgs/{s.slug}/machines", s.owner)["items"]
    assert [m["name"] for m in listed] == [m["name"] for m in s.provisioned()]
    overview = s.ok("GET", f"/orgs/{s.slug}/overview", s.owner)
    assert [x["machine_type"] for x in overview["scaling"]] == ["cpu"]
    actions = [e["action"] for e in overview["scaling_events"]]
    assert actions.count("machine.scaled_up") == 3 and actions.count("machine.scaled_down") == 2

    # A crash: the last machine's agent killed, a new one takes its place.
    survivor = s.provisioned()[0]
    pid_file = next((s.home / "elastic").glob(f"**/{survivor['name']}/agent.pid"))
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    wait_for(
        "a replacement machine online",
        lambda: (m := s.provisioned()) and m[0]["name"] != survivor["name"] and m[0]["online"],
        120,
    )
    replaced = s.audit("machine.replaced")
    assert [e["before"]["name"] for e in replaced] == [survivor["name"]]

    # Detach: the machines stop, then the provider is gone.
    s.ok("DELETE", f"/orgs/{s.slug}/machine-types/cpu/scaling", s.owner)
    wait_for(
        "the provider to be gone",
        lambda: (
            s.call("GET", f"/orgs/{s.slug}/machine-types/cpu/scaling", s.owner).status_code == 404
        ),
        120,
    )
    assert s.ok("GET", f"/orgs/{s.slug}/machines", s.owner)["items"] == []
    print(
        f"\nelastic timings: first machine ready {ready_s:.1f} s; burst of {JOBS} x "
        f"{JOB_SECONDS} s jobs done in {burst_s:.1f} s on {most} machines; back to 1 machine "
        f"{after_last:.1f} s after the last job (grace {GRACE_S} s)"
    )
