"""`cshare up` supervises its children: kill -9 the Prefect server under a running stack
and a job submitted through the API still completes within 60 s of the kill (the API's
gateway and the agent's worker reconnect to the restarted Prefect); kill the API and it
comes back; `cshare up --status` shows the restarts; stopping the supervisor by its PID
leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli.up.processes import start_time
from tests.e2e.test_up import CSHARE, REPO_ROOT, START_TIMEOUT_S, Output, running_up

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(sys.platform != "linux", reason="the supervisor's checks use /proc"),
]

RECOVERY_S = 60.0


def _status(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CSHARE), "up", "--status", *flags],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _children(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = _status(env, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["supervisor_running"] is True
    return {c["name"]: c for c in report["children"]}


def _wait_restarted(
    env: dict[str, str], name: str, old_pid: int, deadline: float, out: Output
) -> dict[str, Any]:
    while True:
        child = _children(env)[name]
        if child["state"] == "running" and child["pid"] not in (None, old_pid):
            return child
        assert time.monotonic() < deadline, f"{name} not back: {child}\n{out.text}"
        time.sleep(0.5)


def test_killed_children_come_back_and_the_stack_keeps_working(tmp_path: Path) -> None:
    with running_up(tmp_path, signal.SIGTERM) as up:
        home, env, api, out, record = up.home, up.env, up.api, up.out, up.record
        out.wait_for("Press Ctrl-C to stop", START_TIMEOUT_S, up.process)
        record()
        first = _children(env)
        assert {n: c["state"] for n, c in first.items()} == {
            "postgres": "running",
            "prefect": "running",
            "api": "running",
            "agent": "running",
        }
        assert all(c["restarts"] == 0 for c in first.values())

        token = (home / "secrets" / "agent-token").read_text().strip()
        client = httpx.Client(
            base_url=f"{api}/api/v1/orgs/demo",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        from api.cli.up.demo import DEMO_MACHINE_TYPE, code_dir
        from flows.library import SHIPPED_FLOWS

        r = client.post(
            "/deployments",
            json={
                "name": "train",
                "entrypoint": SHIPPED_FLOWS["train"],
                "path": code_dir(),
                "machine_type": DEMO_MACHINE_TYPE,
            },
        )
        assert r.status_code in (200, 201), r.text

        # -- Prefect killed: a submission right away still completes within 60 s.
        prefect_pid = first["prefect"]["pid"]
        os.kill(prefect_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        deadline = killed_at + RECOVERY_S
        while True:
            r = client.post("/jobs", json={"deployment": "train", "parameters": {"epochs": 2}})
            if r.status_code < 500:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(1)
        assert r.status_code == 201, r.text
        job = r.json()
        while job["state"] != "completed":
            assert job["state"] not in ("failed", "crashed", "cancelled", "rejected"), job
            assert time.monotonic() < deadline, f"job still {job['state']}:\n{out.text}"
            time.sleep(1)
            record()
            job = client.get(f"/jobs/{job['id']}").json()
        recovered_s = time.monotonic() - killed_at
        print(f"job completed {recovered_s:.1f} s after Prefect was killed")
        assert "Prefect server exited (code -9); restarting in 1 s (restart 1)." in out.text

        prefect = _wait_restarted(env, "prefect", prefect_pid, deadline, out)
        assert prefect["restarts"] == 1 and prefect["last_exit_code"] == -9
        table = _status(env)
        assert table.returncode == 0, table.stderr
        lines = [x for x in table.stdout.splitlines() if x.strip().startswith("Prefect server")]
        assert len(lines) == 1, table.stdout
        line = lines[0]
        assert f" {prefect['pid']} " in line and " running " in line, table.stdout
        assert line.split()[4] == "1", table.stdout  # RESTARTS
        record()

        # -- The API killed: it comes back on its port.
        api_pid = _children(env)["api"]["pid"]
        os.kill(api_pid, signal.SIGKILL)
        deadline = time.monotonic() + RECOVERY_S
        restarted = _wait_restarted(env, "api", api_pid, deadline, out)
        assert restarted["restarts"] == 1 and restarted["last_exit_code"] == -9
        while True:
            try:
                if httpx.get(f"{api}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, out.text
            time.sleep(0.5)
        assert client.get(f"/jobs/{job['id']}").json()["state"] == "completed"
        record()
        final = _children(env)
        assert final["agent"]["restarts"] == 0, final
        for child in final.values():
            assert child["pid"] is not None
            up.recorded.setdefault(child["pid"], start_time(child["pid"]))
        client.close()
    after = _status(env, "--json")
    assert after.returncode == 1  # not running
    report = json.loads(after.stdout)
    assert report["state"] == "stopped"
    assert {c["name"]: c["state"] for c in report["children"]} == {
        "postgres": "stopped",
        "prefect": "stopped",
        "api": "stopped",
        "agent": "stopped",
    }
    assert all((home / "logs" / f"{n}.log").stat().st_size > 0 for n in ("prefect", "api"))
