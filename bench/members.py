"""Latency of `GET /api/v1/orgs/{org}/members` with a large organization, in-process.

    python -m bench.members [--db sqlite|postgres|all] [--members 1000] [--audit 10000]
                            [--requests 500] [--pg-url URL] [--profile] [--gc-freeze]

Seeds one organization with `--members` members (bulk ORM inserts, not HTTP sign-ups)
and `--audit` audit rows, then sends `--requests` authenticated requests for the default
page and for `limit=1000` through FastAPI's TestClient (the full ASGI stack: auth, the
permission guard, the query, serialization) and prints p50/p95/p99/max in ms as Markdown.

PostgreSQL runs in a scratch database created on `--pg-url`'s server and dropped at the
end. `--profile` profiles the `limit=1000` requests afterwards (cProfile in every thread, since
the app runs in TestClient's portal and worker threads) so the hot path can be read off.
`--gc-freeze` moves everything alive after start-up (modules, the app: ~200k objects)
out of the cyclic collector's reach: on this code base the latency tail is mostly full
(generation 2) collections traversing that heap.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import math
import os
import pstats
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

# An isolated home and cheap password hashing, before any project module reads settings.
os.environ.setdefault("CSHARE_HOME", tempfile.mkdtemp(prefix="cshare-bench-home-"))
os.environ.setdefault("CSHARE_ARGON2_TIME_COST", "1")
os.environ.setdefault("CSHARE_ARGON2_MEMORY_KIB", "1024")
os.environ.setdefault("CSHARE_DISPATCHER_ENABLED", "false")  # no background threads
os.environ.setdefault("CSHARE_NOTIFICATIONS_ENABLED", "false")

import psycopg
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert

from api.app import create_app
from orgs import accounts, organizations
from orgs.config import get_settings
from orgs.db import Database, utcnow
from orgs.migrate import upgrade
from orgs.models import AuditEvent, Membership, User
from policies.permissions import Role

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_P99_MS = 20.0
WARMUP = 20


@dataclass(frozen=True)
class Result:
    db: str
    request: str
    latencies_ms: list[float]
    items: int
    cpu_ms: float  # process CPU time per request, all threads: what load cannot inflate

    def pct(self, p: float) -> float:
        """Nearest-rank percentile."""
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Seeded:
    slug: str
    token: str


def seed(db: Database, members: int, audit_rows: int) -> Seeded:
    """An owner, an org, `members` more members and `audit_rows` audit events."""
    with db.session() as s:
        owner, issued = accounts.signup(
            s, email="owner@bench.test", name="bench-owner", password="bench-password"
        )
        org = organizations.create(s, owner, name="Bench", slug="bench", description=None)
        password_hash = owner.password_hash  # one hash for everyone: nobody signs in
        start = utcnow()
        users = [
            {
                "id": uuid.uuid4(),
                "email": f"member{i}@bench.test",
                "name": f"member{i:05d}",
                "password_hash": password_hash,
                "created_at": start,
            }
            for i in range(members)
        ]
        s.execute(insert(User), users)
        s.execute(
            insert(Membership),
            [
                {
                    "id": uuid.uuid4(),
                    "org_id": org.id,
                    "user_id": u["id"],
                    "role": Role.member.value,
                    "created_at": start + timedelta(milliseconds=i),
                }
                for i, u in enumerate(users)
            ],
        )
        s.execute(
            insert(AuditEvent),
            [
                {
                    "org_id": org.id,
                    "actor_id": owner.id,
                    "actor_name": owner.name,
                    "action": "member.joined",
                    "target_type": "user",
                    "target_id": str(users[i % members]["id"]) if members else "",
                    "after": {"role": "member"},
                    "created_at": start + timedelta(milliseconds=i),
                }
                for i in range(audit_rows)
            ],
        )
        s.commit()
        return Seeded(slug=org.slug, token=issued.token)


@contextlib.contextmanager
def sqlite_database() -> Iterator[Database]:
    with tempfile.TemporaryDirectory(prefix="cshare-bench-") as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            yield db
        finally:
            db.dispose()


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[Database]:
    """A scratch database of our own on the server, dropped at the end."""
    name = f"cshare_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(admin_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield db
    finally:
        db.dispose()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(call: Callable[[], int], n: int) -> tuple[list[float], int, float]:
    items = 0
    for _ in range(WARMUP):
        items = call()
    latencies = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        items = call()
        latencies.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (time.process_time() - cpu0) * 1000 / max(n, 1)
    return latencies, items, cpu_ms


def profile(app: FastAPI, url: str, headers: dict[str, str], n: int) -> str:
    """cProfile of `n` requests across every thread (the app runs in TestClient's threads)."""
    profilers: list[cProfile.Profile] = []

    def start_in_thread(*_: object) -> None:
        # The first event in a new thread swaps this hook for a profiler of its own.
        prof = cProfile.Profile()
        profilers.append(prof)
        prof.enable()

    threading.setprofile(start_in_thread)
    try:
        with TestClient(app) as client:  # its portal and worker threads start profiled
            main = cProfile.Profile()
            profilers.append(main)
            main.enable()
            for _ in range(n):
                client.get(url, headers=headers)
            main.disable()
    finally:
        threading.setprofile(None)
    out = io.StringIO()
    stats = pstats.Stats(profilers[0], stream=out)
    for prof in profilers[1:]:
        with contextlib.suppress(TypeError):  # a thread that never ran Python code
            stats.add(prof)
    stats.sort_stats("tottime").print_stats(30)
    return out.getvalue()


def run(
    backend: str,
    db: Database,
    *,
    members: int,
    audit: int,
    requests: int,
    do_profile: bool,
    gc_freeze: bool,
) -> list[Result]:
    upgrade(db.engine)
    seeded = seed(db, members, audit)
    app = create_app(get_settings(), db)
    headers = {"Authorization": f"Bearer {seeded.token}"}
    results = []
    with TestClient(app) as client:
        if gc_freeze:  # what a long-running server could do once it has started
            gc.collect()
            gc.freeze()
        for label, query in (("default page", ""), ("limit=1000", "?limit=1000")):
            url = f"/api/v1/orgs/{seeded.slug}/members{query}"

            def call(url: str = url) -> int:
                r = client.get(url, headers=headers)
                if r.status_code != 200:
                    raise SystemExit(f"{url}: {r.status_code} {r.text}")
                return len(r.json()["items"])

            latencies, items, cpu_ms = measure(call, requests)
            results.append(Result(backend, f"GET members ({label})", latencies, items, cpu_ms))
    if do_profile:
        url = f"/api/v1/orgs/{seeded.slug}/members?limit=1000"
        print(f"\n### profile: {backend}, limit=1000, {requests} requests, all threads\n")
        print(profile(app, url, headers, requests))
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| database | request | items | n | min | p50 | p95 | p99 | max | CPU/request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.db} | {r.request} | {r.items} | {len(r.latencies_ms)} "
            f"| {min(r.latencies_ms):.2f} | {r.pct(50):.2f} | {r.pct(95):.2f} "
            f"| {r.pct(99):.2f} | {max(r.latencies_ms):.2f} | {r.cpu_ms:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.members", description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--audit", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--pg-url", default=os.environ.get("CSHARE_BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument(
        "--profile", action="store_true", help="then profile the limit=1000 requests (cProfile)"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.collect() + gc.freeze() once the app has started (see the README)",
    )
    args = parser.parse_args(argv)

    backends = ["sqlite", "postgres"] if args.db == "all" else [args.db]
    results: list[Result] = []
    for backend in backends:
        opened = sqlite_database() if backend == "sqlite" else postgres_database(args.pg_url)
        with opened as db:
            results += run(
                backend,
                db,
                members=args.members,
                audit=args.audit,
                requests=args.requests,
                do_profile=args.profile,
                gc_freeze=args.gc_freeze,
            )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.members} members, {args.audit} audit rows, {args.requests} requests each "
        f"(after {WARMUP} warm-up), in-process TestClient; times in ms; "
        f"{os.cpu_count()} CPUs, load average {load:.1f}"
        f"{'; gc.freeze() after start-up' if args.gc_freeze else ''}\n"
    )
    print(table(results))
    worst = max(r.pct(99) for r in results)
    verdict = "meets" if worst < TARGET_P99_MS else "MISSES"
    print(f"\nworst p99 {worst:.2f} ms {verdict} the {TARGET_P99_MS:.0f} ms target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
