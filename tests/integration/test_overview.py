"""Overview and per-user usage: exact numbers from a hand-built ledger, on both backends,
through the service functions (fixed `now`), the API and the CLI."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import flows.models as fm
from api.cli.main import app as cli_app
from api.cli.overview import parse_when
from orgs import machines, security, usage_views
from orgs.db import Database
from orgs.models import Machine, Organization
from tests.support import ApiClient

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def test_state_names_match_the_ledger() -> None:
    assert set(usage_views.ALL_STATES) == fm.ALL_STATES
    assert set(usage_views.ACTIVE_STATES) == fm.ACTIVE_STATES
    assert set(usage_views.FINAL_STATES) == fm.FINAL_STATES
    assert usage_views.HELD == fm.HELD


def _machine(s: Any, org_id: uuid.UUID, owner: str, name: str, **kw: Any) -> Machine:
    m = Machine(
        org_id=org_id,
        owner_id=uuid.UUID(owner),
        name=name,
        machine_type=kw.pop("machine_type", "cpu"),
        hardware={},
        slots=kw.pop("slots", 2),
        status=kw.pop("status", "approved"),
        token_hash=security.hash_token(security.new_token("machine")),
        created_at=NOW - 100 * H,
        **kw,
    )
    s.add(m)
    s.flush()
    return m


def _job(s: Any, org_id: uuid.UUID, user: str, state: str, **kw: Any) -> fm.Job:
    created = kw.pop("created_at", NOW - 10 * H)
    job = fm.Job(
        org_id=org_id,
        user_id=uuid.UUID(user),
        machine_type=kw.pop("machine_type", "cpu"),
        state=state,
        memory_mb=1024,
        max_runtime_s=3600,
        created_at=created,
        updated_at=created,
        released_at=kw.pop("released_at", created),
        **kw,
    )
    s.add(job)
    return job


@pytest.fixture
def world(api: ApiClient) -> dict[str, Any]:
    """An org with 4 machines and a ledger whose totals are worked out by hand below."""
    owner, ada, bob = api.signup(), api.signup(), api.signup()
    slug = api.create_org(owner)
    api.add_member(slug, owner, ada)
    api.add_member(slug, owner, bob)
    db = api.db
    with db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        # cpu-1: online, 2 slots, 1 reported running; cpu-2: offline; gpu-1 online 1 slot;
        # cpu-3 pending.
        cpu1 = _machine(
            s,
            org.id,
            owner.id,
            "cpu-1",
            last_heartbeat_at=NOW - timedelta(seconds=5),
            running_jobs=1,
        )
        _machine(s, org.id, owner.id, "cpu-2", last_heartbeat_at=NOW - 2 * H)
        gpu1 = _machine(
            s,
            org.id,
            owner.id,
            "gpu-1",
            machine_type="gpu",
            slots=1,
            last_heartbeat_at=NOW - timedelta(seconds=1),
        )
        _machine(s, org.id, owner.id, "cpu-3", status="pending")
        # Ada: 2 h finished inside the window; 3 h job of which 1 h is inside (since =
        # NOW-24h); running since NOW-30min on cpu-1.
        _job(
            s,
            org.id,
            ada.id,
            fm.COMPLETED,
            started_at=NOW - 5 * H,
            ended_at=NOW - 3 * H,
            machine_id=cpu1.id,
        )
        _job(
            s,
            org.id,
            ada.id,
            fm.FAILED,
            started_at=NOW - 26 * H,
            ended_at=NOW - 23 * H,
            created_at=NOW - 27 * H,
            machine_id=cpu1.id,
        )
        _job(
            s,
            org.id,
            ada.id,
            fm.RUNNING,
            started_at=NOW - timedelta(minutes=30),
            machine_id=cpu1.id,
        )
        # Bob: one gpu job of 1 h, one held now, one held earlier then released (and run
        # 30 min), one outside the window entirely, one rejected (never ran).
        _job(
            s,
            org.id,
            bob.id,
            fm.COMPLETED,
            machine_type="gpu",
            started_at=NOW - 4 * H,
            ended_at=NOW - 3 * H,
            machine_id=gpu1.id,
        )
        _job(s, org.id, bob.id, fm.HELD, released_at=None, created_at=NOW - H)
        _job(
            s,
            org.id,
            bob.id,
            fm.COMPLETED,
            created_at=NOW - 8 * H,
            released_at=NOW - 7 * H,
            started_at=NOW - 7 * H,
            ended_at=NOW - 6.5 * H,
        )
        _job(
            s,
            org.id,
            bob.id,
            fm.COMPLETED,
            created_at=NOW - 50 * H,
            started_at=NOW - 49 * H,
            ended_at=NOW - 48 * H,
        )
        _job(s, org.id, bob.id, fm.REJECTED, created_at=NOW - 2 * H, ended_at=NOW - 2 * H)
        _job(s, org.id, bob.id, fm.SCHEDULED, created_at=NOW - 0.1 * H)
    return {"slug": slug, "owner": owner, "ada": ada, "bob": bob, "db": db}


def _org(db: Database, slug: str) -> Organization:
    with db.session(write=False) as s:
        return s.scalars(select(Organization).where(Organization.slug == slug)).one()


def test_overview_numbers(world: dict[str, Any]) -> None:
    db: Database = world["db"]
    org = _org(db, world["slug"])
    with db.session(write=False) as s:
        o = usage_views.overview(
            s, org, since=NOW - 24 * H, until=NOW, now=NOW, idle_after=timedelta(hours=2)
        )
    assert (o.machines, o.online, o.pending) == (4, 2, 1)
    # cpu-1: 2 slots - 1 reported running; gpu-1: 1 free; cpu-2 offline.
    assert o.free_slots == 2
    assert o.slots == 5  # approved machines' slots: 2 + 2 + 1
    assert (o.active_jobs, o.running_jobs, o.queued_jobs) == (2, 1, 1)
    # 2 h + 1 h (clipped) + 0.5 h (running) for ada; 1 h + 0.5 h for bob.
    assert o.compute_seconds == pytest.approx(5 * 3600)
    by = {t.machine_type: t for t in o.by_type}
    assert by["gpu"].compute_seconds == pytest.approx(3600)
    assert (by["gpu"].machines, by["gpu"].online, by["gpu"].free_slots) == (1, 1, 1)
    assert (by["cpu"].machines, by["cpu"].pending, by["cpu"].queued_jobs) == (3, 1, 1)
    # Idle >= 2 h: cpu-2 (never ran: idle since created) and gpu-1 (last job ended 3 h
    # ago); cpu-1 runs a job.
    assert o.idle_machines == 2


def test_usage_numbers(world: dict[str, Any]) -> None:
    db: Database = world["db"]
    org = _org(db, world["slug"])
    with db.session(write=False) as s:
        u = usage_views.usage(s, org, since=NOW - 24 * H, until=NOW, now=NOW)
    rows = {r.name: r for r in u.users}
    ada, bob = rows[world["ada"].name], rows[world["bob"].name]
    assert ada.compute_seconds == pytest.approx(3.5 * 3600)
    assert (ada.jobs_run, ada.jobs_held, ada.running_now, ada.active_now) == (2, 0, 1, 1)
    assert bob.compute_seconds == pytest.approx(1.5 * 3600)
    assert (bob.jobs_run, bob.jobs_held, bob.queued_now, bob.active_now) == (2, 2, 1, 1)
    assert [r.name for r in u.users][:2] == [ada.name, bob.name]  # heaviest first
    assert u.compute_seconds == pytest.approx(5 * 3600)
    # A window in the past counts only what ran then.
    with db.session(write=False) as s:
        old = usage_views.usage(s, org, since=NOW - 60 * H, until=NOW - 40 * H, now=NOW)
    used = {r.name: r.compute_seconds for r in old.users if r.compute_seconds}
    assert used == {bob.name: pytest.approx(3600)}
    # Ada is listed all the same: she holds a running job now.
    assert {r.name: r.active_now for r in old.users}[ada.name] == 1


def test_machine_activity_for_the_machine_list(world: dict[str, Any]) -> None:
    db: Database = world["db"]
    org = _org(db, world["slug"])
    with db.session(write=False) as s:
        activity = usage_views.machine_activity(s, org, now=NOW)
        names = dict(s.execute(select(Machine.id, Machine.name)).tuples().all())
    by_name = {names[k]: v for k, v in activity.items()}
    assert by_name["cpu-1"].running_jobs == 1 and by_name["cpu-1"].idle_since is None
    assert by_name["gpu-1"].idle_seconds == pytest.approx(3 * 3600)
    assert by_name["gpu-1"].idle_for_at_least(timedelta(hours=2))
    assert by_name["cpu-2"].online is False


def test_api_and_permissions(api: ApiClient, world: dict[str, Any]) -> None:
    slug, owner, ada = world["slug"], world["owner"], world["ada"]
    params = {"since": (NOW - 24 * H).isoformat(), "until": NOW.isoformat()}
    r = api.get(f"/orgs/{slug}/overview", ada, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["machines"] == 4 and body["pending"] == 1 and body["queued_jobs"] == 1
    assert {t["machine_type"] for t in body["by_type"]} == {"cpu", "gpu"}
    # Finished work in the window is exact whatever the clock (ada's running job is not:
    # it runs until the real now).
    assert body["compute_seconds"] >= 4.5 * 3600

    assert api.get(f"/orgs/{slug}/usage", ada).status_code == 403  # admins only
    r = api.get(f"/orgs/{slug}/usage", owner, params={**params, "user": world["bob"].name})
    assert r.status_code == 200, r.text
    [bob] = r.json()["items"]
    assert bob["compute_hours"] == pytest.approx(1.5) and bob["jobs_held"] == 2

    bad = api.get(
        f"/orgs/{slug}/usage",
        owner,
        params={"since": NOW.isoformat(), "until": (NOW - H).isoformat()},
    )
    assert bad.status_code == 422 and bad.json()["field"] == "since"
    outsider = api.signup()
    assert api.get(f"/orgs/{slug}/overview", outsider).status_code == 404


def test_cli_tables_and_json(api: ApiClient, world: dict[str, Any], tmp_path: Any) -> None:
    from tests.support import serve_in_thread

    with serve_in_thread(api.client.app) as url:  # type: ignore[arg-type]
        base = url.removesuffix("/api/v1")
        env = {
            "CSHARE_API_URL": base,
            "CSHARE_TOKEN": world["owner"].token,
            "CSHARE_ORG": world["slug"],
            "CSHARE_CONFIG": str(tmp_path / "c.toml"),
            "COLUMNS": "200",
        }
        runner = CliRunner()
        since = (NOW - 24 * H).isoformat()
        r = runner.invoke(cli_app, ["org", "overview", "--since", since, "--json"], env=env)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["machines"] == 4
        r = runner.invoke(cli_app, ["org", "overview"], env=env)
        assert r.exit_code == 0, r.output
        assert "MACHINES" in r.stdout and "gpu" in r.stdout
        r = runner.invoke(cli_app, ["usage", "--since", "30d"], env=env)
        assert r.exit_code == 0, r.output
        assert world["ada"].name in r.stdout and "COMPUTE" in r.stdout
        window = ["--since", since, "--until", NOW.isoformat()]
        # Compute time in hours and minutes (bob: 1 h + 0.5 h in the window).
        r = runner.invoke(cli_app, ["usage", "--user", world["bob"].name, *window], env=env)
        assert r.exit_code == 0 and "1 h 30 min" in r.stdout, r.output
        # Memory in GiB with one decimal, as the machine reports it (MiB).
        with world["db"].transaction() as s:
            cpu1 = s.scalars(select(Machine).where(Machine.name == "cpu-1")).one()
            cpu1.hardware = {"cpu_count": 8, "memory_mb": 24104}
        r = runner.invoke(cli_app, ["machine", "list"], env=env)
        assert r.exit_code == 0 and "23.5 GiB" in r.stdout, r.output
        r = runner.invoke(cli_app, ["machine", "show", "cpu-1"], env=env)
        assert r.exit_code == 0 and "23.5 GiB" in r.stdout, r.output
        r = runner.invoke(
            cli_app, ["usage", "--json", "--user", world["bob"].name, *window], env=env
        )
        assert r.exit_code == 0 and json.loads(r.stdout)["items"][0]["jobs_held"] == 2
        r = runner.invoke(cli_app, ["usage", "--since", "yesterday"], env=env)
        assert r.exit_code == 2 and "not a time" in r.stderr


def test_parse_when() -> None:
    assert parse_when("2026-01-31T00:00") == "2026-01-31T00:00"
    assert parse_when("2d", now=NOW) == (NOW - 2 * 24 * H).isoformat()
    assert parse_when(None) is None


# ------------------------------------------- the SQL views against a plain-Python model
#
# orgs.usage_views computes everything in a few grouped statements (one per view, branches
# added up in SQL). This model applies, row by row, the exact conditions of the
# straightforward queries the views started as (one query per number), to a random ledger
# full of edge cases; the views must agree for any window and either backend.

ON_MACHINE = {fm.RUNNING, fm.CANCELLING}
OPEN = {fm.HELD, *fm.ACTIVE_STATES}


def _clip(start: datetime, end: datetime, since: datetime, until: datetime) -> float:
    return (min(end, until) - max(start, since)).total_seconds()


def _model(
    rows: list[fm.Job],
    key: str,
    since: datetime,
    until: datetime,
    now: datetime,
    user_id: uuid.UUID | None = None,
) -> dict[Any, dict[str, float]]:
    """Per key: compute_seconds, jobs_run, jobs_held, running, active, queued."""
    out: dict[Any, dict[str, float]] = {}

    def of(job: fm.Job) -> dict[str, float]:
        return out.setdefault(
            getattr(job, key),
            dict.fromkeys(("seconds", "runs", "held", "running", "active", "queued"), 0.0),
        )

    rows = [j for j in rows if user_id is None or j.user_id == user_id]
    # Compute time: finished (ended_at >= since, started_at < until) and still on a machine
    # (no ended_at), each summed per key and counted as max(0, sum), clipped to the window.
    for part in ("ended", "still"):
        sums: dict[Any, float] = {}
        for j in rows:
            if j.started_at is None or j.started_at >= until:
                continue
            if part == "ended":
                if j.ended_at is None or j.ended_at < since:
                    continue
                end = j.ended_at
            else:
                if j.state not in ON_MACHINE or j.ended_at is not None:
                    continue
                end = now
            k = getattr(j, key)
            sums[k] = sums.get(k, 0.0) + _clip(j.started_at, end, since, until)
            of(j)["runs"] += j.started_at >= since
        for k, seconds in sums.items():
            out[k]["seconds"] += max(0.0, seconds)
    for j in rows:
        waited = j.state == fm.HELD or (j.released_at is not None and j.released_at > j.created_at)
        if since <= j.created_at < until and waited:
            of(j)["held"] += 1
        if j.state in OPEN:
            c = of(j)
            c["queued"] += j.state == fm.HELD
            c["active"] += j.state in fm.ACTIVE_STATES
            c["running"] += j.state in ON_MACHINE
    return out


@pytest.fixture
def random_world(api: ApiClient) -> dict[str, Any]:
    """Two orgs; the first with 6 machines and 400 jobs in every state and shape."""
    rnd = random.Random(20261122)
    owner = api.signup()
    people = [api.signup() for _ in range(5)]
    slug, other_slug = api.create_org(owner), api.create_org(owner)
    types = ("cpu", "gpu", "tpu")
    with api.db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        other = s.scalars(select(Organization).where(Organization.slug == other_slug)).one()
        machines = [
            _machine(
                s,
                org.id,
                owner.id,
                f"m{i}",
                machine_type=types[i % 3],
                slots=1 + i % 3,
                status=("approved", "approved", "pending", "rejected")[i % 4],
                last_heartbeat_at=NOW - timedelta(seconds=rnd.choice((1, 30, 7200))),
                running_jobs=rnd.randint(0, 4),
            )
            for i in range(6)
        ]
        for _ in range(420):
            state = rnd.choice(sorted(fm.ALL_STATES))
            created = NOW - timedelta(hours=rnd.uniform(0, 80))
            waited = timedelta(minutes=rnd.choice((0, 0, rnd.uniform(1, 300))))
            started = created + waited + timedelta(seconds=rnd.uniform(0, 60))
            ended = started + timedelta(hours=rnd.uniform(0.01, 30))
            kw: dict[str, Any] = {
                "created_at": created,
                "released_at": created + waited,
                "machine_type": rnd.choice(types),
                "machine_id": rnd.choice(machines).id,
            }
            if state == fm.HELD:
                kw.update(released_at=None, machine_id=None)
            elif state == fm.SCHEDULED:
                pass
            elif state in ON_MACHINE:
                kw["started_at"] = min(started, NOW - timedelta(seconds=1))
                if rnd.random() < 0.1:  # ended but not yet final: counts as finished work
                    kw["ended_at"] = min(ended, NOW)
            elif state == fm.REJECTED:
                kw.update(released_at=None, machine_id=None, ended_at=created)
            elif rnd.random() < 0.1:  # cancelled or failed before it started
                kw["ended_at"] = created + waited
            elif rnd.random() < 0.03:  # a final job the ledger has no end time for
                kw["started_at"] = started
            else:
                kw.update(started_at=started, ended_at=min(ended, NOW))
            _job(s, org.id, rnd.choice(people).id, state, **kw)
        for _ in range(30):  # another organization's jobs must never show
            _job(
                s,
                other.id,
                owner.id,
                fm.COMPLETED,
                started_at=NOW - 5 * H,
                ended_at=NOW - H,
            )
            _job(s, other.id, people[0].id, fm.RUNNING, started_at=NOW - 2 * H)
    return {"db": api.db, "slug": slug, "people": people}


WINDOWS = [
    (NOW - 24 * H, NOW),  # ending now: jobs running now count up to now
    (NOW - 60 * H, NOW - 20 * H),  # in the past: both edges cut through jobs
    (NOW - 90 * H, NOW + 5 * H),  # everything, until after now
    (NOW - 3 * H, NOW - 2 * H),  # one hour
    (NOW - 200 * H, NOW - 100 * H),  # before any job: only open jobs listed
]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{(NOW - w[0]) / H:g}h")
def test_views_match_the_model(random_world: dict[str, Any], window: Any) -> None:
    db: Database = random_world["db"]
    org = _org(db, random_world["slug"])
    since, until = window
    with db.session(write=False) as s:
        ledger = list(s.scalars(select(fm.Job).where(fm.Job.org_id == org.id)))
        o = usage_views.overview(s, org, since=since, until=until, now=NOW)
        u = usage_views.usage(s, org, since=since, until=until, now=NOW)
        ada = random_world["people"][0]
        one = usage_views.usage(
            s, org, since=since, until=until, now=NOW, user_id=uuid.UUID(ada.id)
        )
        cap = machines.capacity(s, org, NOW)
        activity = usage_views.machine_activity(s, org, now=NOW)

    def close(expected: float) -> Any:
        return pytest.approx(expected, rel=1e-9, abs=0.01)  # SQLite's julianday(): ~50 µs

    by_type = _model(ledger, "machine_type", since, until, NOW)
    got_types = {t.machine_type: t for t in o.by_type}
    for m_type, want in by_type.items():
        t = got_types[m_type]
        assert t.compute_seconds == close(want["seconds"]), m_type
        assert (t.running_jobs, t.active_jobs, t.queued_jobs) == (
            want["running"],
            want["active"],
            want["queued"],
        ), m_type
    assert o.compute_seconds == close(sum(w["seconds"] for w in by_type.values()))
    # Capacity exactly as the machine registry counts it.
    assert (o.online, o.free_slots) == (cap.online, cap.free_slots)
    for m_type, t in got_types.items():
        assert t.online == cap.online_by_type.get(m_type, 0)
        assert t.free_slots == cap.free_slots_by_type.get(m_type, 0)
    # Jobs on each machine, from the ledger.
    for machine_id, a in activity.items():
        assert a.running_jobs == sum(
            1 for j in ledger if j.machine_id == machine_id and j.state in ON_MACHINE
        )

    by_user = _model(ledger, "user_id", since, until, NOW)
    got_users = {r.user_id: r for r in u.users}
    assert set(got_users) == set(by_user)
    for uid, want in by_user.items():
        r = got_users[uid]
        assert r.compute_seconds == close(want["seconds"])
        assert (r.jobs_run, r.jobs_held, r.running_now, r.active_now, r.queued_now) == (
            want["runs"],
            want["held"],
            want["running"],
            want["active"],
            want["queued"],
        )
        assert r.name  # joined from users
    order = [(-r.compute_seconds, -r.active_now, -r.jobs_run, r.name) for r in u.users]
    assert order == sorted(order)
    assert u.compute_seconds == close(sum(w["seconds"] for w in by_user.values()))
    # One user: the same row alone.
    assert [r.user_id for r in one.users] == [uid for uid in got_users if uid == uuid.UUID(ada.id)]
    if one.users:  # the same numbers (summed in another order: equal to the last bits)
        both = one.users[0], got_users[uuid.UUID(ada.id)]
        assert both[0].compute_seconds == close(both[1].compute_seconds)
        assert dataclasses.replace(both[0], compute_seconds=0) == dataclasses.replace(
            both[1], compute_seconds=0
        )


def test_metrics_gauges_count_every_state(random_world: dict[str, Any]) -> None:
    db: Database = random_world["db"]
    with db.session(write=False) as s:
        every = usage_views.jobs_by_state(s)
        open_ = usage_views.jobs_by_state(s, usage_views.OPEN_STATES)
        final = usage_views.jobs_by_state(s, usage_views.FINAL_STATES)
        ledger = list(s.scalars(select(fm.Job.state)))
    assert every == {state: ledger.count(state) for state in fm.ALL_STATES}
    assert {**open_, **final} == every
    assert set(open_) == OPEN
