"""Job submission throughput and latency: through the API vs raw Prefect.

    python -m bench.submit [--db sqlite|postgres|all] [--concurrency 1,8,32,64]
                           [--requests 200] [--batch 100] [--prefect-db postgres|sqlite]
                           [--pg-url URL]

Starts a Prefect server (by default on a scratch PostgreSQL database at --pg-url, the
production topology; late-runs service off) and, per control-plane database, the API
under uvicorn on 127.0.0.1 with one org and the `train` deployment. Then, at each
concurrency, sends `--requests`:

- raw: `create_flow_run_from_deployment` with Prefect's own client (default settings,
  one client per thread) straight to the Prefect server;
- API: `POST /api/v1/orgs/{org}/jobs` (auth, admission under the org lock, the ledger
  row and audit row in one transaction, then the flow run through the gateway, the run
  id stored after the answer).

Then the same number of jobs through `POST /orgs/{org}/jobs:batch` in calls of
`--batch` jobs, one call at a time.

No worker runs: runs stay Scheduled, so both sides measure run creation only. Prints a
Markdown table: requests/s, p50/p99 latency (ms), errors, and API/raw throughput, and
the batch endpoint's jobs/s against single submissions'.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("CSHARE_HOME", tempfile.mkdtemp(prefix="cshare-bench-home-"))
os.environ.setdefault("CSHARE_ARGON2_TIME_COST", "1")
os.environ.setdefault("CSHARE_ARGON2_MEMORY_KIB", "1024")
os.environ.setdefault("CSHARE_DISPATCHER_ENABLED", "false")

import httpx
import psycopg

from bench.common import free_port
from bench.common import process as api_process
from tests import prefect_server
from tests.prefect_server import REPO_ROOT, _start_server, _stop

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TRAIN = "flows/library/train.py:train"


@dataclass
class Result:
    kind: str
    db: str
    concurrency: int
    wall_s: float
    latencies_ms: list[float]
    errors: int

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def run_load(
    kind: str, db: str, concurrency: int, requests: int, call: Callable[[int], bool]
) -> Result:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            ok = call(i)
        except Exception:  # an error is a data point here
            ok = False
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            latencies.append(elapsed)
            if not ok:
                errors += 1

    wall_start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return Result(kind, db, concurrency, time.perf_counter() - wall_start, latencies, errors)


def parameter_schema() -> dict[str, Any]:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema as schema_of

    flow: Any = load_flow_from_entrypoint(str(REPO_ROOT / TRAIN))
    schema: dict[str, Any] = schema_of(flow.fn).model_dump_for_openapi()
    return schema


class RawPrefect:
    """Prefect's own sync client, one per thread, at its default settings."""

    def __init__(self, deployment_id: uuid.UUID) -> None:
        self.deployment_id = deployment_id
        self.local = threading.local()
        self.clients: list[Any] = []

    def call(self, i: int) -> bool:
        from prefect.client.orchestration import get_client

        client = getattr(self.local, "client", None)
        if client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            self.local.client = client
            self.clients.append(client)
        client.create_flow_run_from_deployment(self.deployment_id, parameters={"seed": i})
        return True

    def close(self) -> None:
        for client in self.clients:
            client.__exit__(None, None, None)


def scratch_pg(url: str) -> tuple[str, Callable[[], None]]:
    name = f"cshare_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    scratch = url.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return scratch, drop


def bench_db(
    db_kind: str,
    db_url: str,
    server: Any,
    schema: dict[str, Any],
    levels: list[int],
    requests: int,
    batch_size: int = 0,
) -> list[Result]:
    # The API in its own process, as `cshare server` runs it: sharing this process (and
    # its GIL) with the load generator cost it ~40 ms per request.
    port = free_port()
    env = {
        **os.environ,
        "CSHARE_HOME": tempfile.mkdtemp(prefix="cshare-bench-home-"),
        "CSHARE_DATABASE_URL": db_url,
        "CSHARE_PREFECT_API_URL": server.api_url,
        "CSHARE_PREFECT_AUTH_STRING": server.auth_string,
        "CSHARE_DISPATCHER_ENABLED": "false",
        "CSHARE_NOTIFICATIONS_ENABLED": "false",
        "PYTHONPATH": str(REPO_ROOT),
    }
    uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app"]
    uvicorn += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    results: list[Result] = []
    slug = f"bench{uuid.uuid4().hex[:6]}"
    url = f"http://127.0.0.1:{port}/api/v1"
    with (
        api_process(uvicorn, env, url.removesuffix("/api/v1") + "/healthz"),
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        name = f"b{uuid.uuid4().hex[:8]}"
        r = http.post(
            "/auth/signup",
            json={"email": f"{name}@example.test", "name": name, "password": "pw-bench-1234"},
        )
        r.raise_for_status()
        token = r.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        http.post("/orgs", headers=auth, json={"name": slug, "slug": slug}).raise_for_status()
        limits = {
            "organization": {
                "limits": {
                    "max_concurrent_jobs_per_user": 100_000,
                    "max_queued_jobs_per_user": 1_000_000,
                }
            }
        }
        http.put(f"/orgs/{slug}/settings", headers=auth, json={"limits": limits}).raise_for_status()
        dep = http.post(
            f"/orgs/{slug}/deployments",
            headers=auth,
            json={
                "name": "train",
                "entrypoint": TRAIN,
                "path": str(REPO_ROOT),
                "parameter_schema": schema,
            },
        )
        dep.raise_for_status()
        deployment_id = uuid.UUID(dep.json()["prefect_deployment_id"])
        raw = RawPrefect(deployment_id)
        local = threading.local()

        def api_call(i: int) -> bool:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(base_url=url, timeout=120, headers=auth)
            resp = client.post(
                f"/orgs/{slug}/jobs",
                json={"deployment": "train", "parameters": {"seed": i}},
            )
            return resp.status_code == 201 and resp.json().get("flow_run_id") is not None

        def batch_call(size: int) -> Callable[[int], bool]:
            def call(i: int) -> bool:
                client = getattr(local, "client", None)
                if client is None:
                    client = local.client = httpx.Client(base_url=url, timeout=600, headers=auth)
                items = [
                    {"deployment": "train", "parameters": {"seed": i * size + k}}
                    for k in range(size)
                ]
                resp = client.post(f"/orgs/{slug}/jobs:batch", json={"jobs": items})
                body = resp.json() if resp.status_code == 200 else {}
                return bool(body) and body.get("created") == size

            return call

        # Warm both paths (imports, connection pools) before measuring.
        run_load("warmup", db_kind, 4, 20, raw.call)
        run_load("warmup", db_kind, 4, 20, api_call)
        for level in levels:
            results.append(run_load("raw", db_kind, level, requests, raw.call))
            results.append(run_load("api", db_kind, level, requests, api_call))
            print(
                f"  {db_kind} c={level}: raw {results[-2].throughput:.1f}/s "
                f"api {results[-1].throughput:.1f}/s",
                file=sys.stderr,
            )
        raw.close()
        if batch_size:
            # The same number of jobs as one level's singles, in batches of
            # `batch_size`, one call at a time (the batch spreads its Prefect calls).
            calls = max(1, requests // batch_size)
            done = run_load("batch", db_kind, 1, calls, batch_call(batch_size))
            jobs_per_s = calls * batch_size / done.wall_s if done.wall_s else 0.0
            results.append(
                Result("batch", db_kind, batch_size, done.wall_s, done.latencies_ms, done.errors)
            )
            print(f"  {db_kind} batch of {batch_size}: {jobs_per_s:.1f} jobs/s", file=sys.stderr)
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| DB | concurrency | raw req/s | raw p50 ms | raw p99 ms | raw errors "
        "| API req/s | API p50 ms | API p99 ms | API errors | API/raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r.kind, r.db, r.concurrency): r for r in results if r.kind != "batch"}
    for (kind, db, level), raw in by_key.items():
        if kind != "raw":
            continue
        api = by_key[("api", db, level)]
        ratio = api.throughput / raw.throughput if raw.throughput else float("nan")
        lines.append(
            f"| {db} | {level} | {raw.throughput:.1f} | {raw.pct(50):.0f} | {raw.pct(99):.0f} "
            f"| {raw.errors} | {api.throughput:.1f} | {api.pct(50):.0f} | {api.pct(99):.0f} "
            f"| {api.errors} | {ratio:.0%} |"
        )
    for b in results:
        if b.kind != "batch":
            continue
        size = b.concurrency
        jobs_per_s = len(b.latencies_ms) * size / b.wall_s if b.wall_s else 0.0
        single = by_key.get(("api", b.db, 1))
        ratio = jobs_per_s / single.throughput if single and single.throughput else float("nan")
        lines.append("")
        lines.append(
            f"{b.db}: batch endpoint, {len(b.latencies_ms)} calls of {size} jobs: "
            f"{jobs_per_s:.1f} jobs/s ({b.pct(50):.0f} ms per call, {b.errors} errors) = "
            f"{ratio:.1f}x single submissions at concurrency 1"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument(
        "--prefect-db",
        choices=["sqlite", "postgres"],
        default="postgres",
        help="Prefect server's own database (postgres: a scratch database at --pg-url)",
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--batch", type=int, default=100, help="jobs per batch call (0: no batch run)"
    )
    parser.add_argument("--pg-url", default=os.environ.get("CSHARE_TEST_PG_URL", DEFAULT_PG_URL))
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    home = Path(tempfile.mkdtemp(prefix="cshare-bench-prefect-"))
    drop_prefect_db: Callable[[], None] = lambda: None  # noqa: E731
    prefect_url = None
    if args.prefect_db == "postgres":
        scratch, drop_prefect_db = scratch_pg(args.pg_url)
        prefect_url = scratch.replace("postgresql://", "postgresql+asyncpg://", 1)
    # Prefect's first start on PostgreSQL runs its migrations: minutes on a busy machine.
    prefect_server.SERVER_START_TIMEOUT_S = 300
    try:
        process, server = _start_server(home, prefect_url)
    except BaseException:
        drop_prefect_db()
        raise
    os.environ.update(
        PREFECT_API_URL=server.api_url,
        PREFECT_API_AUTH_STRING=server.auth_string,
        PREFECT_HOME=str(home / "client"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    results: list[Result] = []
    try:
        schema = parameter_schema()
        if args.db in ("sqlite", "all"):
            path = Path(tempfile.mkdtemp(prefix="cshare-bench-db-")) / "cshare.db"
            results += bench_db(
                "SQLite", f"sqlite:///{path}", server, schema, levels, args.requests, args.batch
            )
            shutil.rmtree(path.parent, ignore_errors=True)
        if args.db in ("postgres", "all"):
            url, drop = scratch_pg(args.pg_url)
            try:
                results += bench_db(
                    "PostgreSQL", url, server, schema, levels, args.requests, args.batch
                )
            finally:
                drop()
    finally:
        _stop(process)
        drop_prefect_db()
        shutil.rmtree(home, ignore_errors=True)
    print(table(results))


if __name__ == "__main__":
    main()
