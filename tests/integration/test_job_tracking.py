"""Tags after submission, the tag filter, metric series over steps and compare, through
the API on SQLite and PostgreSQL (jobs straight into the ledger, metrics written with
the job's own token exactly as `flows.runtime.log_metadata` does), and the CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from api.app import create_app
from api.cli.main import app as cli_app
from flows import job_metrics
from flows.models import Job
from orgs.config import get_settings
from orgs.db import Database
from orgs.models import AuditEvent
from tests.integration.test_datasets import World, as_job, job_token, make_job, world
from tests.support import ApiClient, Person, serve_in_thread

__all__ = ["world"]


def tagged_job(api: ApiClient, w: World, who: Person, tags: list[str], **kw: Any) -> Job:
    job = make_job(api.db, w.slug, who.id, **kw)
    with api.db.transaction() as s:
        row = s.get(Job, job.id)
        assert row is not None
        row.tags = tags
    return job


def tags_url(w: World, job: Job | uuid.UUID) -> str:
    return f"/orgs/{w.slug}/jobs/{getattr(job, 'id', job)}/tags"


def listed(api: ApiClient, w: World, who: Person, *tags: str) -> set[str]:
    r = api.get(f"/orgs/{w.slug}/jobs", who, params=[("tag", t) for t in tags])
    assert r.status_code == 200, r.text
    return {j["id"] for j in r.json()["items"]}


def log(api: ApiClient, w: World, token: str, job: Job, body: dict[str, Any]) -> Any:
    url = f"/api/v1/orgs/{w.slug}/jobs/{job.id}/metadata"
    return api.client.post(url, headers=as_job(token), json=body)


# ------------------------------------------------------------------------------ tags


def test_tags_added_removed_and_filtered(api: ApiClient, world: World) -> None:
    w = world
    a = tagged_job(api, w, w.alice, ["draft", "lr-sweep"])
    b = tagged_job(api, w, w.alice, ["lr-sweep"])
    c = tagged_job(api, w, w.bob, ["draft"])

    r = api.patch(tags_url(w, a), w.alice, json={"add": ["best", "best"], "remove": ["draft"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tags"] == ["lr-sweep", "best"]
    assert (body["added"], body["removed"], body["prefect_synced"]) == (["best"], ["draft"], None)
    with api.db.session(write=False) as s:
        row = s.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "job.tagged", AuditEvent.target_id == str(a.id)
            )
        ).one()
        assert row.actor_name == w.alice.name and row.after is not None
        assert row.after["added"] == ["best"] and row.before == {"tags": ["draft", "lr-sweep"]}

    # The filter: one tag, every tag of several, none matching; members see their own.
    assert listed(api, w, w.alice, "lr-sweep") == {str(a.id), str(b.id)}
    assert listed(api, w, w.alice, "lr-sweep", "best") == {str(a.id)}
    assert listed(api, w, w.alice, "draft") == set()  # removed from a; c is bob's
    assert listed(api, w, w.admin, "draft") == {str(c.id)}
    assert listed(api, w, w.admin, "nope") == set()
    assert len(listed(api, w, w.admin)) == 3
    r = api.get(f"/orgs/{w.slug}/jobs", w.alice, params={"tag": "bad tag!"})
    assert r.status_code == 422 and r.json()["error"] == "invalid", r.text

    # An admin tags anyone's job; another member's job does not exist for bob.
    assert api.patch(tags_url(w, b), w.admin, json={"add": ["reviewed"]}).status_code == 200
    r = api.patch(tags_url(w, a), w.bob, json={"add": ["mine"]})
    assert r.status_code == 404 and r.json()["error"] == "job_not_found"
    # Non-members and unknown jobs: 404; no token: 401.
    outsider = api.signup()
    api.create_org(outsider)
    assert api.patch(tags_url(w, a), outsider, json={"add": ["x"]}).status_code == 404
    assert api.patch(tags_url(w, uuid.uuid4()), w.alice, json={"add": ["x"]}).status_code == 404
    assert api.patch(tags_url(w, a), None, json={"add": ["x"]}).status_code == 401
    # The job's own token may not relabel it.
    running = tagged_job(api, w, w.alice, [], state="running")
    r = api.client.patch(
        f"/api/v1{tags_url(w, running)}",
        headers=as_job(job_token(api.db, running)),
        json={"add": ["x"]},
    )
    assert r.status_code == 403, r.text
    assert api.get(f"/orgs/{w.slug}/jobs/{a.id}", w.alice).json()["tags"] == ["lr-sweep", "best"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"add": ["has space"]}, "add.0"),
        ({"add": ["x" * 65]}, "add.0"),
        ({"add": ["org:other"]}, "add.0"),  # reserved: set by Compute Share
        ({"remove": ["user:someone"]}, "remove.0"),
        ({"add": ["a"], "remove": ["a"]}, "remove"),
        ({}, "add"),
        ({"add": [f"t{i}" for i in range(19)]}, "add"),  # 2 + 19 > 20
    ],
)
def test_bad_tag_changes_are_422_naming_the_field(
    api: ApiClient, world: World, body: dict[str, Any], field: str
) -> None:
    job = tagged_job(api, world, world.alice, ["one", "two"])
    r = api.patch(tags_url(world, job), world.alice, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text
    assert api.get(f"/orgs/{world.slug}/jobs/{job.id}", world.alice).json()["tags"] == [
        "one",
        "two",
    ]


def test_unknown_fields_are_refused(api: ApiClient, world: World) -> None:
    job = tagged_job(api, world, world.alice, [])
    r = api.patch(tags_url(world, job), world.alice, json={"tags": ["x"]})
    assert r.status_code == 422


# --------------------------------------------------------------------------- metrics


def test_metric_series_over_steps(api: ApiClient, world: World) -> None:
    w = world
    job = make_job(api.db, w.slug, w.alice.id, state="running")
    token = job_token(api.db, job)
    for step in range(5):
        r = log(api, w, token, job, {"step": step, "values": {"loss": 1 / (step + 1), "acc": step}})
        assert r.status_code == 200 and r.json()["points"] == 2, r.text
    # The old dict form still merges plain metadata, beside the series.
    r = log(api, w, token, job, {"values": {"note": "baseline", "f1": 0.5}})
    assert r.json()["metadata"] == {"note": "baseline", "f1": 0.5}
    # A step logged again replaces its value.
    assert log(api, w, token, job, {"step": 4, "values": {"loss": 0.1}}).status_code == 200

    r = api.get(f"/orgs/{w.slug}/jobs/{job.id}/metrics", w.alice)
    assert r.status_code == 200, r.text
    body = r.json()
    series = {s["key"]: s for s in body["series"]}
    assert sorted(series) == ["acc", "loss"]
    assert [p["step"] for p in series["loss"]["points"]] == [0, 1, 2, 3, 4]
    assert [p["value"] for p in series["loss"]["points"]][:2] == [1.0, 0.5]
    assert series["loss"]["latest"]["value"] == 0.1 and series["loss"]["count"] == 5
    assert body["latest"] == {"acc": 4.0, "loss": 0.1, "f1": 0.5}
    assert body["limits"] == {
        "keys_per_job": job_metrics.MAX_KEYS_PER_JOB,
        "points_per_key": job_metrics.MAX_POINTS_PER_KEY,
    }
    one = api.get(f"/orgs/{w.slug}/jobs/{job.id}/metrics", w.alice, params={"key": "acc"}).json()
    assert [s["key"] for s in one["series"]] == ["acc"]
    # Who sees the job sees its metrics: the admin yes, another member and outsiders 404.
    assert api.get(f"/orgs/{w.slug}/jobs/{job.id}/metrics", w.admin).status_code == 200
    assert api.get(f"/orgs/{w.slug}/jobs/{job.id}/metrics", w.bob).status_code == 404
    # Only the job writes its series: its user is refused.
    r = api.client.post(
        f"/api/v1/orgs/{w.slug}/jobs/{job.id}/metadata",
        headers=w.alice.headers,
        json={"step": 9, "values": {"loss": 0.0}},
    )
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ({"step": 0, "values": {"loss": "low"}}, "metric_not_a_number", "values.loss"),
        ({"step": 0, "values": {"loss": True}}, "metric_not_a_number", "values.loss"),
        ({"step": 0, "values": {"loss": None}}, "metric_not_a_number", "values.loss"),
        ({"step": -1, "values": {"loss": 1}}, "bad_step", "step"),
        ({"step": None, "values": {"loss": 1}}, "bad_step", "step"),
        ({"step": 0, "values": {}}, "invalid", "values"),
        ({"step": 0, "values": {"bad name": 1}}, "bad_metric_name", "values.bad name"),
    ],
)
def test_bad_metric_points_are_422(
    api: ApiClient, world: World, body: dict[str, Any], error: str, field: str
) -> None:
    job = make_job(api.db, world.slug, world.alice.id, state="running")
    r = log(api, world, job_token(api.db, job), job, body)
    assert r.status_code == 422, r.text
    assert (r.json()["error"], r.json().get("field")) == (error, field), r.text
    assert api.get(f"/orgs/{world.slug}/jobs/{job.id}/metrics", world.alice).json()["series"] == []


def test_metric_limits(api: ApiClient, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Smaller limits, same code path: the production numbers would take 10,000 calls.
    monkeypatch.setattr(job_metrics, "MAX_KEYS_PER_JOB", 3)
    monkeypatch.setattr(job_metrics, "MAX_POINTS_PER_KEY", 4)
    w = world
    job = make_job(api.db, w.slug, w.alice.id, state="running")
    token = job_token(api.db, job)
    assert log(api, w, token, job, {"step": 0, "values": {"a": 1, "b": 1}}).status_code == 200
    r = log(api, w, token, job, {"step": 0, "values": {"c": 1, "d": 1}})
    assert r.status_code == 422 and r.json()["error"] == "too_many_metrics", r.text
    assert "at most 3 metric series" in r.json()["detail"]
    for step in range(1, 4):
        assert log(api, w, token, job, {"step": step, "values": {"a": step}}).status_code == 200
    r = log(api, w, token, job, {"step": 4, "values": {"a": 4, "b": 4}})
    assert r.status_code == 422 and r.json()["error"] == "too_many_points", r.text
    assert r.json()["field"] == "values.a"
    # Refused whole: b got no point at step 4. Replacing a step of a full series is fine.
    assert log(api, w, token, job, {"step": 3, "values": {"a": 30}}).status_code == 200
    series = {
        s["key"]: s
        for s in api.get(f"/orgs/{w.slug}/jobs/{job.id}/metrics", w.alice).json()["series"]
    }
    assert series["a"]["count"] == 4 and series["a"]["latest"]["value"] == 30
    assert series["b"]["count"] == 1


# --------------------------------------------------------------------------- compare


def test_compare_jobs(api: ApiClient, world: World) -> None:
    w = world
    a = make_job(api.db, w.slug, w.alice.id, state="running")
    b = make_job(api.db, w.slug, w.alice.id, state="running")
    with api.db.transaction() as s:
        row = s.get(Job, b.id)
        assert row is not None
        row.parameters = {"lr": 0.01, "epochs": 3}
    for job, losses in ((a, [0.9, 0.5]), (b, [0.8, 0.3, 0.2])):
        token = job_token(api.db, job)
        for step, loss in enumerate(losses):
            assert log(api, w, token, job, {"step": step, "values": {"loss": loss}}).is_success
    assert log(api, w, job_token(api.db, a), a, {"values": {"acc": 0.7}}).is_success

    r = api.get(f"/orgs/{w.slug}/jobs/compare", w.alice, params={"ids": f"{a.id},{b.id}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [j["id"] for j in body["jobs"]] == [str(a.id), str(b.id)]
    params = {p["key"]: p for p in body["parameters"]}
    assert params["lr"] == {"key": "lr", "values": [0.1, 0.01], "differs": True}
    assert params["epochs"]["values"] == [None, 3] and params["epochs"]["differs"]
    metrics = {m["key"]: m["values"] for m in body["metrics"]}
    assert metrics == {"loss": [0.5, 0.2], "acc": [0.7, None]}
    assert body["jobs"][0]["state"] == "running" and body["jobs"][0]["user"] == w.alice.name
    # Repeated ids= works too.
    r = api.get(
        f"/orgs/{w.slug}/jobs/compare", w.alice, params=[("ids", str(a.id)), ("ids", str(b.id))]
    )
    assert r.status_code == 200
    # One job the caller may not see makes it a 404; bad ids and counts 422.
    other = make_job(api.db, w.slug, w.bob.id)
    r = api.get(f"/orgs/{w.slug}/jobs/compare", w.alice, params={"ids": f"{a.id},{other.id}"})
    assert r.status_code == 404
    assert api.get(
        f"/orgs/{w.slug}/jobs/compare", w.admin, params={"ids": f"{a.id},{other.id}"}
    ).is_success
    for ids in (str(a.id), f"{a.id},nope", ",".join(str(uuid.uuid4()) for _ in range(11))):
        r = api.get(f"/orgs/{w.slug}/jobs/compare", w.alice, params={"ids": ids})
        assert r.status_code == 422 and r.json()["field"] == "ids", r.text


# ------------------------------------------------------------------------------- CLI


def test_cli_tag_list_and_compare(sqlite_database: Database, tmp_path: Path) -> None:
    app = create_app(get_settings(), sqlite_database)
    with serve_in_thread(app) as url, ApiClient.start(sqlite_database) as api:
        alice = api.signup()
        slug = api.create_org(alice)
        w = World(slug, alice, alice, alice, alice)
        a = tagged_job(api, w, alice, ["draft"], state="running")
        b = tagged_job(api, w, alice, [], state="running")
        for job, loss in ((a, 0.5), (b, 0.25)):
            assert log(
                api, w, job_token(api.db, job), job, {"step": 1, "values": {"loss": loss}}
            ).is_success
        env = {
            "CSHARE_CONFIG": str(tmp_path / "cli.toml"),
            "CSHARE_API_URL": url.removesuffix("/api/v1"),
            "CSHARE_TOKEN": alice.token,
            "CSHARE_ORG": slug,
            "COLUMNS": "200",
        }

        def cli(*args: str, code: int = 0) -> str:
            result = CliRunner().invoke(cli_app, list(args), env=env)
            assert result.exit_code == code, (args, result.stdout, result.stderr)
            return result.stdout + result.stderr

        out = cli("job", "tag", str(a.id), "+best", "-draft", "+sweep")
        assert "best" in out and "draft" not in out.split("Tags:")[-1]
        shown = json.loads(cli("job", "show", str(a.id), "--json"))
        assert shown["tags"] == ["best", "sweep"]
        listed_ids = json.loads(cli("job", "list", "--tag", "best", "--json"))
        assert [j["id"] for j in listed_ids["items"]] == [str(a.id)]
        assert str(a.id)[:8] in cli("job", "list", "--tag", "best", "--tag", "sweep")
        assert "No jobs" in cli("job", "list", "--tag", "draft")
        assert "+tag or -tag" in cli("job", "tag", str(a.id), "best", code=2)
        assert "reserved" in cli("job", "tag", str(a.id), "+org:x", code=1)

        table = cli("job", "compare", str(a.id), str(b.id))
        assert "loss" in table and "0.5" in table and "0.25" in table and "lr" not in table
        data = json.loads(cli("job", "compare", str(a.id), str(b.id), "--json"))
        assert [m["key"] for m in data["metrics"]] == ["loss"]


# --------------------------------------------------------------------------- console


def test_console_tags_metrics_artifacts_and_compare(sqlite_database: Database) -> None:
    """The job page's tag editor, metrics table and charts, artifacts with download
    links; the list's tag filter and compare boxes; the compare page."""
    from tests.integration.test_datasets import create, upload_as_job
    from tests.integration.test_web_pages import _browser

    app = create_app(get_settings(), sqlite_database)
    with ApiClient.start(sqlite_database) as api:
        owner, alice, bob = api.signup(), api.signup(), api.signup()
        slug = api.create_org(owner)
        api.add_member(slug, owner, alice)
        api.add_member(slug, owner, bob)
        w = World(slug, owner, owner, alice, bob)
        a = tagged_job(api, w, alice, ["draft"], state="running")
        b = tagged_job(api, w, alice, ["sweep"], state="running")
        for job, losses in ((a, [0.9, 0.4]), (b, [0.7, 0.5, 0.2])):
            token = job_token(api.db, job)
            for step, loss in enumerate(losses):
                assert log(api, w, token, job, {"step": step, "values": {"loss": loss}}).is_success
        create(api, w, alice, "models")
        r = upload_as_job(api, w, job_token(api.db, a), "models", b"weights")
        assert r.status_code == 201, r.text

        me, other = _browser(app, alice), _browser(app, bob)
        base = f"/orgs/{slug}/jobs"
        page = me.get(f"{base}/{a.id}").text
        assert 'aria-labelledby="metric-0-title metric-0-desc"' in page
        assert '<title id="metric-0-title">loss over steps</title>' in page
        assert "first 0.9, last 0.4" in page  # the chart's description
        assert f"/orgs/{slug}/datasets/models/versions/1/download" in page
        assert 'aria-label="Remove tag draft"' in page
        assert other.get(f"{base}/{a.id}").status_code == 404

        r = me.post(f"{base}/{a.id}/tags", {"add": "best, keep"})
        assert r.status_code == 303 and "notice=tagged" in r.headers["location"]
        r = me.post(f"{base}/{a.id}/tags", {"remove": "draft"})
        assert r.status_code == 303
        r = me.post(f"{base}/{a.id}/tags", {"add": "bad tag!"})
        assert r.status_code == 422 and "is invalid" in r.text
        assert other.post(f"{base}/{a.id}/tags", {"add": "x"}).status_code == 404
        assert api.get(f"/orgs/{slug}/jobs/{a.id}", alice).json()["tags"] == ["best", "keep"]

        listing = me.get(f"{base}?tag=best").text
        assert str(a.id)[:8] in listing and str(b.id)[:8] not in listing
        assert f'name="ids" value="{a.id}"' in listing
        assert me.get(f"{base}?tag=best+sweep").text.count('name="ids"') == 0

        cmp = me.get(f"{base}/compare", params=[("ids", str(a.id)), ("ids", str(b.id))])
        assert cmp.status_code == 200, cmp.text
        assert cmp.text.count('class="chart-line"') == 2
        assert f'data-series="{str(a.id)[:8]}"' in cmp.text
        assert "Pick 2 to 10 jobs" in me.get(f"{base}/compare").text
        assert me.get(f"{base}/compare", params={"ids": f"{a.id},nope"}).status_code == 422
        other_job = make_job(api.db, slug, bob.id)
        r = me.get(f"{base}/compare", params={"ids": f"{a.id},{other_job.id}"})
        assert r.status_code == 404


# ------------------------------------------------------------------- Prefect in sync


@pytest.mark.prefect
@pytest.mark.xdist_group("prefect")
@pytest.mark.timeout(240)
def test_run_tags_in_prefect_follow(sqlite_database: Database, prefect_gateway: Any) -> None:
    """Tags changed on a job are changed on its flow run too, keeping the run's own
    org:/user:/type: tags and the deployment's."""
    from tests.integration.test_jobs_support import jobs_app, limits_doc, setup_org

    slug = f"tags{uuid.uuid4().hex[:6]}"
    with jobs_app(sqlite_database, prefect_gateway) as api:
        org = setup_org(api, slug, limits_doc())
        org.deploy("train", tags=["example"])
        alice = org.add_member()
        r = org.submit(alice, "train", tags=["draft"], parameters={"epochs": 1})
        assert r.status_code == 201, r.text
        job = r.json()
        run_id = uuid.UUID(job["flow_run_id"])
        assert "draft" in prefect_gateway.read_flow_run(run_id).tags
        r = api.patch(
            f"/orgs/{slug}/jobs/{job['id']}/tags",
            alice,
            json={"add": ["best"], "remove": ["draft"]},
        )
        assert r.status_code == 200 and r.json()["prefect_synced"] is True, r.text
        tags = set(prefect_gateway.read_flow_run(run_id).tags)
        assert {"best", f"org:{slug}", f"user:{alice.name}", "type:cpu"} <= tags
        assert "draft" not in tags
        assert api.post(f"/orgs/{slug}/jobs/{job['id']}/cancel", alice).status_code == 200


def test_runtime_log_metadata_both_forms(
    sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`flows.runtime.log_metadata` as a flow calls it, over HTTP with the job's token:
    the old dict form, keywords, and `step=` series; a refused point raises."""
    from flows import runtime

    app = create_app(get_settings(), sqlite_database)
    with serve_in_thread(app) as url, ApiClient.start(sqlite_database) as api:
        alice = api.signup()
        slug = api.create_org(alice)
        job = make_job(sqlite_database, slug, alice.id, state="running")
        for name, value in {
            "CSHARE_API_URL": url.removesuffix("/api/v1"),
            "CSHARE_ORG": slug,
            "CSHARE_JOB_ID": str(job.id),
            "CSHARE_JOB_TOKEN": job_token(sqlite_database, job),
        }.items():
            monkeypatch.setenv(name, value)
        assert runtime.log_metadata({"note": "old form"}) == {"note": "old form"}
        assert runtime.log_metadata(epochs=3) == {"note": "old form", "epochs": 3}
        for step in range(3):
            runtime.log_metadata(step=step, loss=1 / (step + 1), acc=step / 3)
        with pytest.raises(runtime.RuntimeProblem, match="must be a number"):
            runtime.log_metadata(step=3, loss="nan-ish")
        body = api.get(f"/orgs/{slug}/jobs/{job.id}/metrics", alice).json()
        assert {s["key"]: s["count"] for s in body["series"]} == {"acc": 3, "loss": 3}
        assert body["latest"]["epochs"] == 3 and body["latest"]["loss"] == pytest.approx(1 / 3)
