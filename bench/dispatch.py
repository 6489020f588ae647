"""Release-to-running latency on an idle machine: our agent versus a stock Prefect worker.

    python -m bench.dispatch [--runs 20] [--stock-runs 10] [--gap 4.0]

Starts, as real processes on this machine: a Prefect server (SQLite, as in the tests),
the Compute Share API with its dispatcher, our agent (`cshare agent start`, 1 slot), and
a stock `prefect worker start --type process` with Prefect's default settings (10 s
poll). Then, one job at a time with the machine idle in between (`--gap` seconds after
each run ends):

- ours: `POST /orgs/{org}/jobs` (admitted at once, so its run is created `Scheduled` for
  now: released), the agent claims it and runs it;
- stock: a run of the same flow created `Scheduled` for now in the stock worker's pool.

Latency = the run's `start_time` (entering `Running`) minus its creation time, both
stamped by the Prefect server (no clock skew); "pickup" is the part until the worker
moved it to `Pending` (noticing it, and for ours the claim), the rest is process start.
CPU seconds per job = CPU time of the worker's whole process tree (the agent or
`prefect worker`, its flow processes, warm processes included) over the measured
window, divided by the runs: idle polling counts.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import free_port
from flows.gateway import PrefectGateway
from tests.prefect_server import PrefectServer, _start_server, _stop

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENTRYPOINT = "bench/dispatch_flow.py:noop"
TICKS = os.sysconf("SC_CLK_TCK")


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Result:
    name: str
    latencies: list[float]
    pickups: list[float]  # created -> Pending: the worker noticed and claimed it
    cpu_s: float

    def row(self) -> str:
        lat = self.latencies
        per_job = self.cpu_s / len(lat)
        return (
            f"| {self.name} | {len(lat)} | {statistics.median(lat):.2f} | {_p(lat, 0.99):.2f} "
            f"| {statistics.mean(lat):.2f} | {statistics.median(self.pickups):.2f} "
            f"| {per_job:.2f} |"
        )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CSHARE_"))}


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def _cpu_ticks(pid: int) -> int:
    """utime+stime of `pid` and every live descendant, plus what they reaped (Linux)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        found = stats.get(current)
        if found is not None:  # utime, stime, cutime, cstime: fields 14-17
            total += sum(int(f) for f in found[11:15])
        stack.extend(children.get(current, []))
    return total


def _spawn(
    args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def _pending_after(gateway: PrefectGateway, info: Any) -> float:
    """Seconds from the run's creation to its `Pending` state (Prefect's clock)."""
    response = gateway._http.get("flow_run_states/", params={"flow_run_id": str(info.id)})
    response.raise_for_status()
    for state in response.json():
        if state["type"] == "PENDING":
            pending = datetime.fromisoformat(state["timestamp"])
            return float((pending - info.created).total_seconds())
    return float("nan")


def _final(gateway: PrefectGateway, run_id: uuid.UUID) -> Any:
    run = gateway.read_flow_run(run_id)
    return run if run.is_final else None


def _measure(
    name: str,
    gateway: PrefectGateway,
    worker_pid: int,
    runs: int,
    gap: float,
    create: Callable[[], uuid.UUID],
) -> Result:
    latencies: list[float] = []
    pickups: list[float] = []
    time.sleep(gap)
    cpu_before = _cpu_ticks(worker_pid)
    for i in range(runs):
        run_id = create()
        info = _wait(
            f"{name} run {i}",
            lambda run_id=run_id: _final(gateway, run_id),  # type: ignore[misc]
            120,
            0.2,
        )
        if info.start_time is None or info.created is None:
            raise RuntimeError(f"{name}: run {run_id} ended {info.state_name} without running")
        latencies.append((info.start_time - info.created).total_seconds())
        pickups.append(_pending_after(gateway, info))
        print(
            f"  {name} run {i + 1}/{runs}: {latencies[-1]:.2f} s (picked up after "
            f"{pickups[-1]:.2f} s)",
            file=sys.stderr,
        )
        time.sleep(gap)
    cpu_s = (_cpu_ticks(worker_pid) - cpu_before) / TICKS
    return Result(name, latencies, pickups, cpu_s)


def _warm_up(gateway: PrefectGateway, create: Callable[[], uuid.UUID]) -> None:
    """One unmeasured run: the worker has polled, connected and cached what it needs."""
    run_id = create()
    _wait("the warm-up run", lambda: gateway.read_flow_run(run_id).is_final, 120, 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs through our agent")
    parser.add_argument("--stock-runs", type=int, default=10, help="runs on the stock worker")
    # A flow process lingers ~2 s after its run ends (flushing logs and events); the gap
    # lets it exit, so every run starts on an idle machine.
    parser.add_argument("--gap", type=float, default=4.0, help="idle seconds between runs")
    parser.add_argument("--keep", action="store_true", help="keep the logs and databases")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="cshare-bench-dispatch-"))
    processes: list[subprocess.Popen[bytes]] = []
    prefect_process, prefect = _start_server(home)
    gateway = PrefectGateway(prefect.api_url, prefect.auth_string)
    try:
        ours = _ours(home, prefect, gateway, processes, args.runs, args.gap)
        stock = _stock(home, prefect, gateway, processes, args.stock_runs, args.gap)
    finally:
        for process in reversed(processes):
            _stop(process)
        gateway.close()
        _stop(prefect_process)
        if args.keep:
            print(f"logs and databases kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(f"\nRelease-to-running on an idle machine ({os.cpu_count()} cores), seconds:\n")
    print("| worker | runs | p50 | p99 | mean | p50 pickup | CPU s per job |")
    print("|---|---|---|---|---|---|---|")
    print(ours.row())
    print(stock.row())


def _ours(
    home: Path,
    prefect: PrefectServer,
    gateway: PrefectGateway,
    processes: list[subprocess.Popen[bytes]],
    runs: int,
    gap: float,
) -> Result:
    port = free_port()
    env = _clean_env()
    env.update(
        CSHARE_HOME=str(home / "api"),
        CSHARE_PREFECT_API_URL=prefect.api_url,
        CSHARE_PREFECT_AUTH_STRING=prefect.auth_string,
        CSHARE_WORK_POOL_TYPE="cshare",
        CSHARE_ARGON2_TIME_COST="1",
        CSHARE_ARGON2_MEMORY_KIB="1024",
    )
    processes.append(
        _spawn([str(BIN / "cshare"), "server", "--port", str(port)], env, home / "api.log")
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    _wait("the API", up, 60)
    http = httpx.Client(base_url=url + "/api/v1", timeout=30)
    name = f"bench{uuid.uuid4().hex[:6]}"
    signup = {"email": f"{name}@example.test", "name": name, "password": "bench-password-1"}
    token = http.post("/auth/signup", json=signup).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    slug = http.post("/orgs", json={"name": f"Bench {name}"}, headers=auth).json()["slug"]
    settings = {"machines": {"approval_required": False}}
    http.put(f"/orgs/{slug}/settings", json=settings, headers=auth).raise_for_status()
    deployment = {"name": "noop", "entrypoint": ENTRYPOINT, "path": str(REPO)}
    http.post(f"/orgs/{slug}/deployments", json=deployment, headers=auth).raise_for_status()
    agent_env = _clean_env()
    agent_env.update(
        CSHARE_API_URL=url,
        CSHARE_TOKEN=token,
        CSHARE_ORG=slug,
        CSHARE_AGENT_HOME=str(home / "agent"),
        CSHARE_CONFIG=str(home / "cli.json"),
        PREFECT_HOME=str(home / "prefect-agent"),
    )
    agent = _spawn(
        [str(BIN / "cshare"), "agent", "start", "--name", "bench-box", "--slots", "1"],
        agent_env,
        home / "agent.log",
    )
    processes.append(agent)

    def warm() -> bool:
        machines = http.get(f"/orgs/{slug}/machines", headers=auth).json()["items"]
        return bool(machines) and machines[0]["health"] == "online"

    _wait("the agent", warm, 60)

    def create() -> uuid.UUID:
        r = http.post(f"/orgs/{slug}/jobs", json={"deployment": "noop"}, headers=auth)
        r.raise_for_status()
        return uuid.UUID(r.json()["flow_run_id"])

    _warm_up(gateway, create)
    try:
        return _measure("cshare agent (ours)", gateway, agent.pid, runs, gap, create)
    finally:
        http.close()


def _stock(
    home: Path,
    prefect: PrefectServer,
    gateway: PrefectGateway,
    processes: list[subprocess.Popen[bytes]],
    runs: int,
    gap: float,
) -> Result:
    pool = "bench-stock"
    gateway.ensure_work_pool(pool, type="process")
    deployment_id = gateway.ensure_deployment(
        name="noop-stock",
        flow_name="noop",
        entrypoint=ENTRYPOINT,
        work_pool_name=pool,
        working_directory=str(REPO),
    )
    # Prefect's defaults: nothing but where the server is.
    env = prefect.client_env(PREFECT_HOME=str(home / "prefect-stock"))
    worker = _spawn(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
        env,
        home / "stock-worker.log",
    )
    processes.append(worker)
    time.sleep(5)

    def create() -> uuid.UUID:
        return gateway.create_flow_run(deployment_id, idempotency_key=str(uuid.uuid4())).id

    _warm_up(gateway, create)
    return _measure("prefect worker --type process (stock)", gateway, worker.pid, runs, gap, create)


if __name__ == "__main__":
    main()
