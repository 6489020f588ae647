"""Job credentials (issue 12), on SQLite and PostgreSQL (the `api` fixture).

A job token (`cs_j_...`, what the claim hands the job's flow) is scoped to its job: it
reads the job's pinned inputs, writes its outputs (only the declared ones, each once)
and its own record, and is refused everywhere else; it dies when the job ends (through
the ledger) and when it expires. A job's lineage is written only by the job: members,
owners included, cannot attach outputs to a job or write its metadata or run record.

Every test here attacks: it passes only when the attack fails.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi.routing import APIRoute

from api.job_credentials import job_token_use
from datasets.models import JobToken
from flows import ledger
from flows.models import Job
from orgs.config import Settings
from orgs.db import utcnow
from orgs.security import hash_token
from policies.job_states import JobEvent
from tests.integration.test_datasets import (
    World,
    as_job,
    create,
    ds,
    job_token,
    make_job,
    upload,
    upload_as_job,
    world,
)
from tests.support import PREFIX, ApiClient

__all__ = ["world"]  # the fixture, shared with test_datasets

# The only routes a job token may call; everything else must refuse it (403).
JOB_TOKEN_ROUTES = {
    "GET /orgs/{org}/jobs/{id}/inputs",
    "GET /orgs/{org}/jobs/{id}/code",
    "GET /orgs/{org}/datasets/{name}/versions/{version}/download",
    "POST /orgs/{org}/datasets",
    "POST /orgs/{org}/datasets/{name}/versions",
    "POST /orgs/{org}/jobs/{id}/metadata",
    "POST /orgs/{org}/jobs/{id}/lineage",
    "GET /orgs/{org}/jobs/{id}/registry-auth",  # a container job's login (test_registries)
}


class Running:
    """A running job of alice's reading `input-a@1`, and its token."""

    def __init__(self, api: ApiClient, w: World, **job: Any) -> None:
        self.api, self.w = api, w
        self.job = make_job(api.db, w.slug, w.alice.id, inputs=["input-a"], state="running", **job)
        self.token = job_token(api.db, self.job)

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = as_job(self.token, **kw.pop("headers", {}))
        response: httpx.Response = self.api.client.request(
            method, PREFIX + path, headers=headers, **kw
        )
        return response

    def inputs(self) -> httpx.Response:
        return self.call("GET", f"/orgs/{self.w.slug}/jobs/{self.job.id}/inputs")

    def download_input(self) -> httpx.Response:
        return self.call("GET", f"{ds(self.w, 'input-a')}/versions/1/download")

    def metadata(self, values: dict[str, Any], job_id: uuid.UUID | None = None) -> httpx.Response:
        url = f"/orgs/{self.w.slug}/jobs/{job_id or self.job.id}/metadata"
        return self.call("POST", url, json={"values": values})

    def upload(self, name: str, data: bytes, **kw: Any) -> httpx.Response:
        return upload_as_job(self.api, self.w, self.token, name, data, **kw)

    def works(self) -> None:
        assert self.inputs().status_code == 200
        assert self.download_input().content == b"aaa"


@pytest.fixture
def datasets(api: ApiClient, world: World) -> World:
    """input-a (the job's input), other (readable by alice, not an input), results."""
    for name in ("input-a", "other", "results"):
        create(api, world, world.alice, name)
    upload(api, world, world.alice, "input-a", b"aaa")
    upload(api, world, world.alice, "other", b"zzz")
    return world


def refused(r: httpx.Response, status: int, error: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert {"error", "detail"} <= set(body), body
    if error is not None:
        assert body["error"] == error, body


# ----------------------------------------------------------------- scope


def test_a_job_token_is_refused_outside_its_job(api: ApiClient, datasets: World) -> None:
    w = datasets
    run = Running(api, w)
    run.works()
    # Another dataset of the org that the job's user can read: not through the job.
    refused(run.call("GET", f"{ds(w, 'other')}/versions/1/download"), 404, "dataset_not_found")
    refused(run.call("GET", ds(w, "other")), 403, "job_token_scope")
    refused(run.call("GET", ds(w)), 403, "job_token_scope")  # no listing
    refused(run.call("GET", f"/orgs/{w.slug}/lineage", params={"dataset": "other"}), 403)
    # No submitting, no org / member / machine endpoints.
    body = {"deployment": "anything"}
    refused(run.call("POST", f"/orgs/{w.slug}/jobs", json=body), 403, "job_token_scope")
    refused(run.call("GET", f"/orgs/{w.slug}/members"), 403, "job_token_scope")
    refused(run.call("GET", f"/orgs/{w.slug}/machines"), 403, "job_token_scope")
    refused(run.call("GET", f"/orgs/{w.slug}"), 403, "job_token_scope")
    refused(run.call("GET", "/me"), 403, "job_token_scope")
    # Another job of the same user: its inputs and metadata do not exist for this token.
    sibling = make_job(api.db, w.slug, w.alice.id, inputs=["other"], state="running")
    refused(run.call("GET", f"/orgs/{w.slug}/jobs/{sibling.id}/inputs"), 404, "job_not_found")
    refused(run.metadata({"x": 1}, job_id=sibling.id), 404, "job_not_found")
    refused(run.upload("results", b"r", params={"job": str(sibling.id)}), 404, "job_not_found")
    # Its own job's lineage graph would show other datasets: members only.
    refused(run.call("GET", f"/orgs/{w.slug}/jobs/{run.job.id}/lineage"), 403, "job_token_scope")
    # Writes to datasets that are not outputs: access, delete, the store.
    refused(run.call("PUT", f"{ds(w, 'results')}/access", json={}), 403, "job_token_scope")
    refused(run.call("DELETE", ds(w, "other")), 403, "job_token_scope")
    refused(run.call("PUT", f"/orgs/{w.slug}/datastore", json={}), 403, "job_token_scope")
    # Another organization's slug: the job is not there.
    other_slug = api.create_org(w.bob)
    refused(run.call("GET", f"/orgs/{other_slug}/jobs/{run.job.id}/inputs"), 404)
    run.works()  # none of that hurt the token


def _routes(app: Any) -> list[tuple[str, str, APIRoute]]:
    found: list[tuple[str, str, APIRoute]] = []
    for ctx in fastapi.routing.iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute):
            found.extend(
                (m, str(ctx.path), route) for m in sorted(set(ctx.methods or ()) - {"HEAD"})
            )
    return found


def test_every_other_route_refuses_a_job_token(api: ApiClient, datasets: World) -> None:
    """The default is refusal: every API route, called with a live job token, answers 403
    `job_token_scope` unless it is one of the few that name what a job token is for."""
    run = Running(api, datasets)
    allowed: set[str] = set()
    for method, path, route in _routes(api.client.app):
        label = f"{method} {path.removeprefix(PREFIX)}"
        if job_token_use(route) is not None:
            allowed.add(label)
            continue
        url = re.sub(r"\{org\}", datasets.slug, path)
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), url)
        r = run.api.client.request(method, url, headers=as_job(run.token))
        assert r.status_code == 403, f"{label}: {r.status_code} {r.text[:200]}"
        assert r.json()["error"] == "job_token_scope", label
    assert allowed == JOB_TOKEN_ROUTES
    run.works()


def test_declared_outputs_are_the_only_ones_written(api: ApiClient, datasets: World) -> None:
    w = datasets
    run = Running(api, w, outputs=["results", "fresh"])
    assert run.upload("results", b"r").status_code == 201
    # An existing dataset it may write as its user, but did not declare.
    create(api, w, w.alice, "undeclared")
    refused(run.upload("undeclared", b"u"), 403, "job_output_undeclared")
    refused(run.call("POST", ds(w), json={"name": "sneaky"}), 403, "job_output_undeclared")
    r = run.call("POST", ds(w), json={"name": "fresh"})  # a declared output it creates
    assert r.status_code == 201, r.text
    r = run.upload("fresh", b"f")
    assert r.status_code == 201 and r.json()["produced_by_job_id"] == str(run.job.id)


# ----------------------------------------------------------------- lifetime


@pytest.mark.parametrize(
    "event", [JobEvent.observe_completed, JobEvent.cancel, JobEvent.observe_failed]
)
def test_a_job_token_dies_with_its_job(api: ApiClient, datasets: World, event: JobEvent) -> None:
    run = Running(api, datasets)
    run.works()
    with api.db.transaction() as s:
        job = s.get(Job, run.job.id)
        assert job is not None
        assert ledger.apply(s, job, event).moved
    with api.db.session(write=False) as s:
        assert s.get(JobToken, hash_token(run.token)) is None  # revoked, not only refused
    refused(run.inputs(), 401, "bad_token")
    refused(run.download_input(), 401, "bad_token")
    refused(run.upload("results", b"late"), 401, "bad_token")
    refused(run.metadata({"late": True}), 401, "bad_token")
    url = f"/orgs/{datasets.slug}/jobs/{run.job.id}/lineage"
    refused(run.call("POST", url, json={"code": {"git_commit": "x"}}), 401, "bad_token")


def test_a_token_of_an_ended_job_is_refused_even_if_its_row_survived(
    api: ApiClient, datasets: World
) -> None:
    ended = make_job(api.db, datasets.slug, datasets.alice.id, inputs=["input-a"])  # completed
    token = job_token(api.db, ended)
    r = api.client.get(
        f"{PREFIX}/orgs/{datasets.slug}/jobs/{ended.id}/inputs", headers=as_job(token)
    )
    refused(r, 401, "bad_token")


def test_a_job_token_expires(api: ApiClient, datasets: World) -> None:
    run = Running(api, datasets)
    run.works()
    with api.db.transaction() as s:
        row = s.get(JobToken, hash_token(run.token))
        assert row is not None
        # The job's runtime limit plus the grace: 600 s + 600 s by default.
        left = (row.expires_at - utcnow()).total_seconds()
        assert 1195 < left <= 1200
        row.expires_at = utcnow() - timedelta(seconds=1)  # time moves on
    refused(run.inputs(), 401, "bad_token")
    refused(run.metadata({"late": True}), 401, "bad_token")


def test_the_grace_is_a_setting(api: ApiClient, datasets: World, monkeypatch: Any) -> None:
    monkeypatch.setenv("CSHARE_JOB_TOKEN_GRACE_S", "5")
    grace = Settings().job_token_grace_s
    assert grace == 5
    job = make_job(api.db, datasets.slug, datasets.alice.id, inputs=["input-a"], state="running")
    token = job_token(api.db, job, grace_s=grace)
    with api.db.session(write=False) as s:
        row = s.get(JobToken, hash_token(token))
        assert row is not None
        left = (row.expires_at - utcnow()).total_seconds()
    assert 600 < left <= 605  # max_runtime_s (600) + 5


# ----------------------------------------------------------------- lineage is write-once


def test_a_job_writes_each_output_once(api: ApiClient, datasets: World) -> None:
    run = Running(api, datasets)
    first = run.upload("results", b"first")
    assert first.status_code == 201, first.text
    # A retry of the very same upload (its answer lost) is the same version, not a copy.
    again = run.upload("results", b"first")
    assert again.status_code == 200 and again.json()["version"] == first.json()["version"]
    refused(run.upload("results", b"rewritten"), 409, "output_written")
    sha = "0" * 64  # announced up front: refused before any byte is stored
    refused(
        run.upload("results", b"other", headers={"X-Content-SHA256": sha}), 409, "output_written"
    )
    versions = api.get(ds(datasets, "results"), datasets.alice).json()["versions"]
    assert [v["version"] for v in versions] == [1]


def test_members_never_attach_outputs_to_a_job(api: ApiClient, datasets: World) -> None:
    w = datasets
    run = Running(api, w)
    job = str(run.job.id)
    # The job's own user, the owner and an admin: 403 naming the rule, nothing stored.
    for who in (w.alice, w.owner, w.admin):
        r = upload(api, w, who, "results", b"forged", params={"job": job})
        refused(r, 403, "lineage_job_only")
    # A member who cannot see the job: it does not exist for them.
    refused(upload(api, w, w.bob, "results", b"forged", params={"job": job}), 404)
    record = api.get(f"/orgs/{w.slug}/jobs/{job}/lineage", w.alice).json()["job"]
    assert record["outputs"] == []
    # Plain versions (no job) are still every writer's to add.
    assert upload(api, w, w.alice, "results", b"by hand").status_code == 201


def test_members_never_write_a_jobs_record(api: ApiClient, datasets: World) -> None:
    w = datasets
    run = Running(api, w)
    assert run.metadata({"accuracy": 0.9}).status_code == 200
    meta_url = f"/orgs/{w.slug}/jobs/{run.job.id}/metadata"
    run_url = f"/orgs/{w.slug}/jobs/{run.job.id}/lineage"
    for who in (w.alice, w.owner, w.admin, w.bob):
        refused(
            api.post(meta_url, who, json={"values": {"accuracy": 1.0}}), 403, "lineage_job_only"
        )
        r = api.post(run_url, who, json={"code": {"git_commit": "forged"}})
        refused(r, 403, "lineage_job_only")
    record = api.get(run_url, w.alice).json()["job"]
    assert record["metadata"] == {"accuracy": 0.9} and record["code"] == {}


def test_the_run_record_is_written_once(api: ApiClient, datasets: World) -> None:
    run = Running(api, datasets)
    url = f"/orgs/{datasets.slug}/jobs/{run.job.id}/lineage"
    code = {"git_commit": "abc", "git_dirty": False}
    assert run.call("POST", url, json={"code": code}).status_code == 200
    assert run.call("POST", url, json={"code": code}).status_code == 200  # a retried report
    # Fields not yet reported may still come (resources used, at the end).
    r = run.call("POST", url, json={"resources_used": {"max_rss_mb": 5}})
    assert r.status_code == 200 and r.json()["resources"]["used"] == {"max_rss_mb": 5}
    refused(run.call("POST", url, json={"code": {"git_commit": "evil"}}), 409, "lineage_written")
    refused(run.call("POST", url, json={"resources_used": {"max_rss_mb": 1}}), 409)
    record = api.get(url, datasets.alice).json()["job"]
    assert record["code"] == code and record["resources"]["used"] == {"max_rss_mb": 5}


def test_declared_outputs_are_checked_at_submission(api: ApiClient, datasets: World) -> None:
    url = f"/orgs/{datasets.slug}/jobs/explain"
    for outputs in (["../escape"], ["same", "same"]):
        r = api.post(url, datasets.alice, json={"deployment": "any", "outputs": outputs})
        refused(r, 422)
        assert r.json()["field"] == "outputs", r.text
