"""Who may scrape `/metrics` (a bearer metrics token, an explicitly open port, or the
separate listener), and the per-org series with their bounded `org` label."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import select

import flows.models as fm
from orgs import metrics as orgs_metrics
from orgs.db import Database
from orgs.models import Organization
from tests.integration.test_jobs_support import FakePrefect, jobs_app
from tests.support import ApiClient

TOKEN = "metrics-" + uuid.uuid4().hex


def _org_series(text: str, name: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                labels = dict(sample.labels)
                key = labels.pop("org"), next(iter(labels.values()))
                out[key] = sample.value
    return out


def test_unauthenticated_scrapes_get_401_by_default(sqlite_api: ApiClient) -> None:
    someone = sqlite_api.signup()
    for path in ("/metrics", "/api/v1/metrics"):
        r = sqlite_api.client.get(path)
        assert r.status_code == 401, r.text
        body = r.json()
        assert body["error"] == "unauthenticated"
        assert "CSHARE_METRICS_TOKEN" in body["detail"]
        assert "cshare_jobs" not in r.text
        # A user's own API token is not a metrics token.
        assert sqlite_api.client.get(path, headers=someone.headers).status_code == 401


def test_token_and_open(sqlite_database: Database) -> None:
    with jobs_app(sqlite_database, FakePrefect(), metrics_token=SecretStr(TOKEN)) as api:
        assert api.client.get("/metrics").status_code == 401
        wrong = api.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401 and "Bearer" in wrong.json()["detail"]
        assert TOKEN not in wrong.text
        basic = api.client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        ok = api.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "cshare_jobs" in ok.text
    with jobs_app(sqlite_database, FakePrefect(), metrics_open=True) as api:
        r = api.client.get("/metrics")
        assert r.status_code == 200 and "cshare_http_request_duration_seconds" in r.text


def test_separate_listener(sqlite_database: Database) -> None:
    with jobs_app(sqlite_database, FakePrefect(), metrics_listen="127.0.0.1:0") as api:
        app: Any = api.client.app
        host, port = app.state.metrics_listener.address
        r = httpx.get(f"http://{host}:{port}/metrics", timeout=10)
        assert r.status_code == 200 and "cshare_jobs" in r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert httpx.get(f"http://{host}:{port}/other", timeout=10).status_code == 404
        # The API's own port still refuses, and says where the metrics are.
        refused = api.client.get("/metrics")
        assert refused.status_code == 401 and "127.0.0.1:0" in refused.json()["detail"]
    # Stopped with the app.
    try:
        httpx.get(f"http://{host}:{port}/metrics", timeout=2)
        raise AssertionError("the metrics listener outlived the app")
    except httpx.TransportError:
        pass


def test_listener_with_token(sqlite_database: Database) -> None:
    overrides: dict[str, Any] = {
        "metrics_listen": "127.0.0.1:0",
        "metrics_token": SecretStr(TOKEN),
    }
    with jobs_app(sqlite_database, FakePrefect(), **overrides) as api:
        host, port = api.client.app.state.metrics_listener.address  # type: ignore[attr-defined]
        url = f"http://{host}:{port}/metrics"
        assert httpx.get(url, timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(url, headers=auth, timeout=10).status_code == 200


def test_per_org_series_are_bounded(database: Database) -> None:
    """Five orgs with 5, 4, 3, 2 and 1 held jobs; with the top 2 named, the other three
    are one series (org="other") holding their sum; the total is unchanged."""
    overrides: dict[str, Any] = {"metrics_token": SecretStr(TOKEN), "metrics_top_orgs": 2}
    with jobs_app(database, FakePrefect(), **overrides) as api:
        owner = api.signup()
        slugs = [api.create_org(owner, f"Busy {uuid.uuid4().hex[:6]}") for _ in range(5)]
        with database.transaction() as s:
            for held, slug in zip((5, 4, 3, 2, 1), slugs, strict=True):
                org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()
                for _ in range(held):
                    s.add(
                        fm.Job(
                            org_id=org_id,
                            user_id=uuid.UUID(owner.id),
                            machine_type="cpu",
                            state=fm.HELD,
                            memory_mb=512,
                            max_runtime_s=60,
                        )
                    )
            # One running job in the busiest org too.
            busiest = s.scalars(select(Organization.id).where(Organization.slug == slugs[0])).one()
            s.add(
                fm.Job(
                    org_id=busiest,
                    user_id=uuid.UUID(owner.id),
                    machine_type="cpu",
                    state=fm.RUNNING,
                    memory_mb=512,
                    max_runtime_s=60,
                )
            )
        r = api.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        series = _org_series(r.text, "cshare_org_jobs")
        orgs = {org for org, _state in series}
        assert orgs == {slugs[0], slugs[1], "other"}
        assert series[(slugs[0], "held")] == 5 and series[(slugs[0], "running")] == 1
        assert series[(slugs[1], "held")] == 4
        assert series[("other", "held")] == 3 + 2 + 1
        assert sum(v for (_o, state), v in series.items() if state == "held") == 15

        api.set_settings(metrics_top_orgs=0)  # not read again: the collector keeps its N
        r = api.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert {org for org, _ in _org_series(r.text, "cshare_org_jobs")} == orgs


def test_org_labels_fold_beyond_the_top() -> None:
    activity = {f"org{i:03d}": i for i in range(500)}
    labels = orgs_metrics.org_labels(activity, 10)
    assert set(labels.values()) == {f"org{i:03d}" for i in range(490, 500)} | {"other"}
    # Ties broken by name, so the same orgs stay named between scrapes.
    tied = orgs_metrics.org_labels({"b": 1, "a": 1, "c": 1}, 2)
    assert tied == {"a": "a", "b": "b", "c": "other"}
    # An org called "other" never takes a named slot.
    assert orgs_metrics.org_labels({"other": 9, "x": 1}, 1) == {"other": "other", "x": "x"}
    assert set(orgs_metrics.org_labels(activity, 0).values()) == {"other"}
