"""Usage reports: storage (datasets and code bundles, now and added in the window), active
members, per-period rows, and CSV from the API and `cshare usage --csv`; members see
their own. The ledger and catalog rows are written by hand so every number is known."""

from __future__ import annotations

import csv
import io
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import flows.models as fm
from api.cli.main import app as cli_app
from datasets.models import CodeBundle, Dataset, DatasetVersion
from orgs import usage_views
from orgs.db import utcnow
from orgs.models import Organization
from tests.support import ApiClient, serve_in_thread

H = timedelta(hours=1)
D = timedelta(days=1)


@pytest.fixture
def usage_world(api: ApiClient) -> dict[str, Any]:
    owner, ada, bob, cy = (api.signup() for _ in range(4))
    slug = api.create_org(owner)
    for person in (ada, bob, cy):
        api.add_member(slug, owner, person)
    now = utcnow()
    with api.db.transaction() as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()

        def job(who: Any, state: str, created: datetime, **kw: Any) -> None:
            s.add(
                fm.Job(
                    org_id=org_id,
                    user_id=uuid.UUID(who.id),
                    machine_type="cpu",
                    state=state,
                    memory_mb=512,
                    max_runtime_s=3600,
                    created_at=created,
                    updated_at=created,
                    released_at=created,
                    **kw,
                )
            )

        # Ada: a 30 min job an hour ago. Bob: held three days ago. Cy: 40 days ago only.
        job(ada, fm.COMPLETED, now - H, started_at=now - H, ended_at=now - H / 2)
        job(bob, fm.HELD, now - 3 * D)
        job(cy, fm.COMPLETED, now - 40 * D, started_at=now - 40 * D, ended_at=now - 40 * D + H)
        data = Dataset(org_id=org_id, name="images", created_by=uuid.UUID(ada.id))
        s.add(data)
        s.flush()
        s.add(
            DatasetVersion(
                dataset_id=data.id,
                version=1,
                kind="file",
                filename="a.bin",
                sha256="a" * 64,
                size=500,
                created_by=uuid.UUID(ada.id),
                created_at=now - 10 * D,
                tombstoned_at=now - 2 * D,  # deleted: added in a 30 d window, not held now
            )
        )
        s.add(
            DatasetVersion(
                dataset_id=data.id,
                version=2,
                kind="file",
                filename="a.bin",
                sha256="b" * 64,
                size=1000,
                created_by=uuid.UUID(ada.id),
                created_at=now - H,
            )
        )
        s.add(
            CodeBundle(
                org_id=org_id,
                digest="sha256:" + "c" * 64,
                size=300,
                files=3,
                created_by=uuid.UUID(bob.id),
                created_at=now - 5 * D,
            )
        )
    return {"api": api, "slug": slug, "owner": owner, "ada": ada, "bob": bob, "cy": cy}


def test_storage_and_active_members(usage_world: dict[str, Any]) -> None:
    api, slug, owner = usage_world["api"], usage_world["slug"], usage_world["owner"]
    r = api.get(f"/orgs/{slug}/usage", owner, params={"since": _ago(7 * D)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["storage"] == {
        "used_bytes": 1300,
        "max_bytes": None,
        "datasets_bytes": 1000,
        "bundles_bytes": 300,
        "datasets_added_bytes": 1000,
        "bundles_added_bytes": 300,
    }
    assert body["active_members"] == 2 and body["members"] == 4  # ada and bob
    assert body["periods"] is None
    month = api.get(f"/orgs/{slug}/usage", owner).json()  # default: 30 days
    assert month["storage"]["datasets_added_bytes"] == 1500  # the deleted version too
    assert month["active_members"] == 2
    two_days = api.get(f"/orgs/{slug}/usage", owner, params={"since": _ago(2 * D)}).json()
    assert two_days["active_members"] == 1
    assert two_days["storage"]["bundles_added_bytes"] == 0
    long = api.get(f"/orgs/{slug}/usage", owner, params={"since": _ago(60 * D)}).json()
    assert long["active_members"] == 3


def test_periods(usage_world: dict[str, Any]) -> None:
    api, slug, owner = usage_world["api"], usage_world["slug"], usage_world["owner"]
    r = api.get(f"/orgs/{slug}/usage", owner, params={"since": _ago(7 * D), "period": "day"})
    assert r.status_code == 200, r.text
    body = r.json()
    periods = body["periods"]
    assert 7 <= len(periods) <= 8
    assert periods[0]["start"] == body["since"] and periods[-1]["end"] == body["until"]
    for a, b in itertools.pairwise(periods):
        assert a["end"] == b["start"]
        assert b["start"].endswith("T00:00:00Z") or "T00:00:00" in b["start"]
    assert sum(p["jobs_run"] for p in periods) == 1
    assert sum(p["datasets_added_bytes"] for p in periods) == 1000
    assert sum(p["bundles_added_bytes"] for p in periods) == 300
    assert sum(p["compute_seconds"] for p in periods) == pytest.approx(1800, abs=1)
    assert periods[-1]["active_members"] >= 1  # ada, today (or yesterday near midnight)
    assert sum(p["active_members"] for p in periods) == 2
    bad = api.get(f"/orgs/{slug}/usage", owner, params={"since": _ago(800 * D), "period": "day"})
    assert bad.status_code == 422 and bad.json()["field"] == "period"
    assert api.get(f"/orgs/{slug}/usage", owner, params={"period": "year"}).status_code == 422


def test_periods_cut_at_calendar_boundaries() -> None:
    since = datetime(2026, 1, 30, 15, 0, tzinfo=UTC)
    until = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    months = usage_views.periods(since, until, "month")
    assert [(a.month, a.day, b.month, b.day) for a, b in months] == [
        (1, 30, 2, 1),
        (2, 1, 3, 1),
        (3, 1, 3, 2),
    ]
    weeks = usage_views.periods(since, until, "week")
    assert all(a.weekday() == 0 and a.hour == 0 for a, _ in weeks[1:])  # Mondays
    assert weeks[0][0] == since and weeks[-1][1] == until
    dec = usage_views.periods(
        datetime(2025, 12, 20, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC), "month"
    )
    assert dec[0][1] == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        usage_views.periods(since, since + 500 * D, "day")


def test_csv_from_the_api(usage_world: dict[str, Any]) -> None:
    api, slug, owner = usage_world["api"], usage_world["slug"], usage_world["owner"]
    params = {"since": _ago(7 * D)}
    as_json = api.get(f"/orgs/{slug}/usage", owner, params=params).json()
    by_query = api.get(f"/orgs/{slug}/usage", owner, params={**params, "format": "csv"})
    by_accept = api.get(f"/orgs/{slug}/usage", owner, params=params, headers={"Accept": "text/csv"})
    for r in (by_query, by_accept):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        assert "attachment" in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [row["user"] for row in rows] == [i["name"] for i in as_json["items"]]
        ada = next(row for row in rows if row["user"] == usage_world["ada"].name)
        assert float(ada["compute_seconds"]) == pytest.approx(1800, abs=1)
        assert ada["jobs_run"] == "1"
    periods = api.get(
        f"/orgs/{slug}/usage", owner, params={**params, "period": "week", "format": "csv"}
    )
    rows = list(csv.DictReader(io.StringIO(periods.text)))
    assert rows and set(rows[0]) >= {"start", "end", "active_members", "datasets_added_bytes"}
    assert sum(int(row["datasets_added_bytes"]) for row in rows) == 1000
    # format=json wins over the Accept header.
    r = api.get(
        f"/orgs/{slug}/usage",
        owner,
        params={**params, "format": "json"},
        headers={"Accept": "text/csv"},
    )
    assert r.json()["active_members"] == 2


def test_members_see_their_own(usage_world: dict[str, Any]) -> None:
    api, slug, ada = usage_world["api"], usage_world["slug"], usage_world["ada"]
    assert api.get(f"/orgs/{slug}/usage", ada, params={"format": "csv"}).status_code == 403
    mine = api.get(f"/orgs/{slug}/usage/me", ada, params={"format": "csv"})
    assert mine.status_code == 200 and mine.headers["content-type"].startswith("text/csv")
    (row,) = list(csv.DictReader(io.StringIO(mine.text)))
    assert row["name"] == ada.name and row["storage_bytes"] == "1000"
    assert row["jobs_completed"] == "1" and row["jobs_run"] == "1"
    outsider = api.signup()
    assert api.get(f"/orgs/{slug}/usage/me", outsider).status_code == 404


def test_cli_csv_and_period(usage_world: dict[str, Any], tmp_path: Any) -> None:
    api = usage_world["api"]
    with serve_in_thread(api.client.app) as url:
        env = {
            "CSHARE_API_URL": url.removesuffix("/api/v1"),
            "CSHARE_TOKEN": usage_world["owner"].token,
            "CSHARE_ORG": usage_world["slug"],
            "CSHARE_CONFIG": str(tmp_path / "c.toml"),
            "COLUMNS": "200",
        }
        runner = CliRunner()
        r = runner.invoke(cli_app, ["usage", "--csv", "--since", "7d"], env=env)
        assert r.exit_code == 0, r.output
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert {row["user"] for row in rows} == {usage_world["ada"].name, usage_world["bob"].name}
        r = runner.invoke(cli_app, ["usage", "--since", "7d", "--period", "day"], env=env)
        assert r.exit_code == 0, r.output
        assert "active members: 2 of 4" in r.stdout and "Per day" in r.stdout
        assert "code bundles 300 B" in r.stdout
        r = runner.invoke(cli_app, ["usage", "--period", "week", "--csv", "--since", "7d"], env=env)
        assert r.exit_code == 0 and r.stdout.startswith("start,end,"), r.output
        r = runner.invoke(cli_app, ["usage", "--period", "fortnight"], env=env)
        assert r.exit_code == 2 and "day, week or month" in r.stderr
        member_env = {**env, "CSHARE_TOKEN": usage_world["bob"].token}
        r = runner.invoke(cli_app, ["usage", "--me", "--csv"], env=member_env)
        assert r.exit_code == 0, r.output
        (row,) = list(csv.DictReader(io.StringIO(r.stdout)))
        assert row["name"] == usage_world["bob"].name and row["jobs_held"] == "1"
        r = runner.invoke(cli_app, ["usage", "--me", "--json"], env=member_env)
        assert json.loads(r.stdout)["queued_now"] == 1


def _ago(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).isoformat()
