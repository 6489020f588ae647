"""The Prefect proxy's added latency: the same calls straight to Prefect and through
`/prefect/<org>/api`.

    python -m bench.proxy [--db sqlite|postgres] [--requests 300] [--pg-url URL]

Starts a Prefect server (SQLite, as the tests run it) and the API under uvicorn in its
own process (as `cshare server` runs it), makes one org with the `train` deployment and
a few jobs as its owner, then sends, one at a time over a kept-alive connection and
interleaved (direct, proxied, direct, ...), `--requests` of each:

- `GET /flow_runs/{id}`: the proxy authenticates the token, reads the run's job from
  the ledger, checks it, and streams Prefect's answer back;
- `POST /flow_runs/filter` (limit 10): the proxy also reads the caller's scope (their
  newest runs) and rewrites the filter body.

Prints a Markdown table of p50/p99 in ms for both paths and the difference. Check
`uptime` first: other load on the machine shows up in the tail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import free_port
from bench.common import process as api_process
from bench.submit import DEFAULT_PG_URL, TRAIN, parameter_schema, scratch_pg
from flows.gateway import PrefectGateway
from tests.prefect_server import REPO_ROOT, _start_server, _stop

WARMUP = 30


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _time(call: Callable[[httpx.Client], httpx.Response], client: httpx.Client) -> float:
    start = time.perf_counter()
    response = call(client)
    took = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return took


def bench(db_url: str, requests: int) -> list[tuple[str, list[float], list[float]]]:
    home = Path(tempfile.mkdtemp(prefix="cshare-bench-prefect-"))
    prefect_proc, server = _start_server(home)
    port = free_port()
    env = {
        **os.environ,
        "CSHARE_HOME": tempfile.mkdtemp(prefix="cshare-bench-home-"),
        "CSHARE_DATABASE_URL": db_url,
        "CSHARE_PREFECT_API_URL": server.api_url,
        "CSHARE_PREFECT_AUTH_STRING": server.auth_string,
        "CSHARE_DISPATCHER_ENABLED": "false",
        "CSHARE_NOTIFICATIONS_ENABLED": "false",
        "CSHARE_ARGON2_TIME_COST": "1",
        "CSHARE_ARGON2_MEMORY_KIB": "1024",
        "PYTHONPATH": str(REPO_ROOT),
    }
    uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app"]
    uvicorn += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    root = f"http://127.0.0.1:{port}"
    slug = f"bench{uuid.uuid4().hex[:6]}"
    try:
        with (
            api_process(uvicorn, env, root + "/healthz"),
            httpx.Client(base_url=root + "/api/v1", timeout=60) as api,
        ):
            name = f"b{uuid.uuid4().hex[:8]}"
            r = api.post(
                "/auth/signup",
                json={"email": f"{name}@example.test", "name": name, "password": "pw-bench-1234"},
            )
            r.raise_for_status()
            token = r.json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            api.post("/orgs", headers=auth, json={"name": slug, "slug": slug}).raise_for_status()
            api.post(
                f"/orgs/{slug}/deployments",
                headers=auth,
                json={
                    "name": "train",
                    "entrypoint": TRAIN,
                    "path": str(REPO_ROOT),
                    "parameter_schema": parameter_schema(),
                },
            ).raise_for_status()
            runs = []
            for i in range(5):
                job = api.post(
                    f"/orgs/{slug}/jobs",
                    headers=auth,
                    json={"deployment": "train", "parameters": {"seed": i}},
                )
                job.raise_for_status()
                runs.append(job.json()["flow_run_id"])
            run = runs[0]
            gateway = PrefectGateway(server.api_url, server.auth_string)
            direct_auth = dict(gateway._http.headers)  # the Basic header Prefect expects
            gateway.close()
            with (
                httpx.Client(base_url=server.api_url, headers=direct_auth, timeout=60) as direct,
                httpx.Client(
                    base_url=f"{root}/prefect/{slug}/api", headers=auth, timeout=60
                ) as proxy,
            ):
                calls: list[tuple[str, Callable[[httpx.Client], httpx.Response]]] = [
                    ("GET /flow_runs/{id}", lambda c: c.get(f"/flow_runs/{run}")),
                    (
                        "POST /flow_runs/filter",
                        lambda c: c.post("/flow_runs/filter", json={"limit": 10}),
                    ),
                ]
                out = []
                for label, call in calls:
                    for _ in range(WARMUP):
                        _time(call, direct)
                        _time(call, proxy)
                    d, p = [], []
                    for _ in range(requests):
                        d.append(_time(call, direct))
                        p.append(_time(call, proxy))
                    out.append((label, d, p))
                return out
    finally:
        _stop(prefect_proc)
        shutil.rmtree(home, ignore_errors=True)


def table(db: str, results: list[tuple[str, list[float], list[float]]]) -> str:
    lines = [
        "| DB | call | direct p50 | direct p99 | proxy p50 | proxy p99 | added p50 | added p99 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, d, p in results:
        lines.append(
            f"| {db} | `{label}` | {_pct(d, 50):.1f} | {_pct(d, 99):.1f} | {_pct(p, 50):.1f} "
            f"| {_pct(p, 99):.1f} | {_pct(p, 50) - _pct(d, 50):.1f} "
            f"| {_pct(p, 99) - _pct(d, 99):.1f} |"
        )
    means = [statistics.fmean(p) - statistics.fmean(d) for _, d, p in results]
    lines.append("")
    lines.append("ms; added mean per call: " + ", ".join(f"{m:.1f}" for m in means))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--pg-url", default=os.environ.get("CSHARE_TEST_PG_URL", DEFAULT_PG_URL))
    args = parser.parse_args()
    if args.db == "sqlite":
        path = Path(tempfile.mkdtemp(prefix="cshare-bench-db-")) / "cshare.db"
        try:
            print(table("SQLite", bench(f"sqlite:///{path}", args.requests)))
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
    else:
        url, drop = scratch_pg(args.pg_url)
        try:
            print(table("PostgreSQL", bench(url, args.requests)))
        finally:
            drop()


if __name__ == "__main__":
    main()
