"""Code bundles through the API, on SQLite and PostgreSQL, with the in-memory Prefect fake.

Covers: upload once per digest (HEAD, PUT, 200 on a repeat), the server recomputing the
digest (422 on a mismatch, nothing stored), ownership per org (another org's digest is
404 even with the same bytes, until it uploads them itself), the storage quota and the
size limit (413), deployments naming a bundle (422 when the org lacks it; Prefect's
version and pull step), jobs keeping their code across redeploys, rerun, and the job's
code read with its own job token only.
"""

from __future__ import annotations

import hashlib
import io
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datasets import bundle_format
from flows import job_tokens
from flows.models import Job
from orgs.db import Database
from tests.integration.test_jobs_support import FakePrefect, OrgSetup, jobs_app, setup_org
from tests.support import ApiClient, Person

pytestmark = pytest.mark.timeout(120)

FLOW = "flow.py:hello"


class RecordingPrefect(FakePrefect):
    """The fake, remembering what each deployment upsert sent."""

    def __init__(self) -> None:
        super().__init__()
        self.upserts: list[dict[str, Any]] = []

    def ensure_deployment(self, *, name: str, flow_name: str, **kw: Any) -> uuid.UUID:
        self.upserts.append({"name": name, **kw})
        return super().ensure_deployment(name=name, flow_name=flow_name)


@pytest.fixture
def world(database: Database) -> Iterator[tuple[ApiClient, OrgSetup, RecordingPrefect]]:
    fake = RecordingPrefect()
    with jobs_app(database, fake) as api:
        yield api, setup_org(api, f"cb{uuid.uuid4().hex[:6]}"), fake


def bundle(tmp_path: Path, text: str) -> tuple[bytes, bundle_format.Packed]:
    root = tmp_path / uuid.uuid4().hex
    root.mkdir()
    (root / "flow.py").write_text("from prefect import flow\n\n@flow\ndef hello():\n    pass\n")
    (root / "helper.py").write_text(text)
    out = io.BytesIO()
    packed = bundle_format.pack(root, ["flow.py", "helper.py"], out)
    return out.getvalue(), packed


def url(org: OrgSetup, digest: str) -> str:
    return f"/orgs/{org.slug}/bundles/{digest}"


def put(api: ApiClient, org: OrgSetup, who: Person, data: bytes, digest: str) -> Any:
    return api.put(
        url(org, digest) + "?files=2",
        who,
        content=data,
        headers={"Content-Type": bundle_format.MEDIA_TYPE},
    )


def test_upload_once_per_digest(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect], tmp_path: Path
) -> None:
    api, org, _ = world
    data, packed = bundle(tmp_path, "V = 1\n")
    assert api.request("HEAD", url(org, packed.digest), org.owner).status_code == 404
    r = put(api, org, org.owner, data, packed.digest)
    assert r.status_code == 201, r.text
    assert r.json()["digest"] == packed.digest
    assert r.json()["size"] == len(data) and r.json()["files"] == 2
    head = api.request("HEAD", url(org, packed.digest), org.owner)
    assert head.status_code == 200
    assert head.headers["X-Cshare-Size"] == str(len(data))
    assert put(api, org, org.owner, data, packed.digest).status_code == 200  # deduplicated
    # A bare hex digest names the same bundle.
    bare = packed.digest.removeprefix("sha256:")
    assert api.get(url(org, bare), org.owner).json()["digest"] == packed.digest
    r = api.get(url(org, "sha256:xyz"), org.owner)
    assert r.status_code == 422 and r.json()["field"] == "digest"


def test_a_body_that_is_not_the_digest_is_refused(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect], tmp_path: Path
) -> None:
    api, org, _ = world
    data, packed = bundle(tmp_path, "V = 1\n")
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    r = put(api, org, org.owner, data, wrong)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "checksum_mismatch"
    assert wrong in r.json()["detail"]
    assert api.request("HEAD", url(org, wrong), org.owner).status_code == 404
    assert api.request("HEAD", url(org, packed.digest), org.owner).status_code == 404


def test_another_org_never_reads_it(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect], tmp_path: Path
) -> None:
    api, org, _ = world
    other = setup_org(api, f"cx{uuid.uuid4().hex[:6]}")
    data, packed = bundle(tmp_path, "SECRET = 42\n")
    assert put(api, org, org.owner, data, packed.digest).status_code == 201
    # Same digest, other org: 404 for its owner, 404 for an outsider to org A.
    assert api.request("HEAD", url(other, packed.digest), other.owner).status_code == 404
    assert api.get(url(other, packed.digest), other.owner).status_code == 404
    assert api.get(url(org, packed.digest), other.owner).status_code == 404
    # A deployment of org B naming it: 422 (it has no such bundle).
    r = api.post(
        f"/orgs/{other.slug}/deployments",
        other.owner,
        json={"name": "x", "entrypoint": FLOW, "code": {"kind": "bundle", "digest": packed.digest}},
    )
    assert r.status_code == 422 and r.json()["error"] == "bundle_missing"
    # Org B uploading the same bytes gets its own row.
    assert put(api, other, other.owner, data, packed.digest).status_code == 201


def test_quota_and_size_limit(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect], tmp_path: Path
) -> None:
    api, org, _ = world
    first, p1 = bundle(tmp_path, "A = 1\n")
    second, p2 = bundle(tmp_path, "B = 2\n" * 50)
    r = api.put(
        f"/orgs/{org.slug}/settings",
        org.owner,
        json={"storage": {"max_bytes": len(first) + 10}},
    )
    assert r.status_code == 200, r.text
    assert put(api, org, org.owner, first, p1.digest).status_code == 201
    r = put(api, org, org.owner, second, p2.digest)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "storage_quota_exceeded"  # the first bundle counts
    assert api.request("HEAD", url(org, p2.digest), org.owner).status_code == 404
    api.put(f"/orgs/{org.slug}/settings", org.owner, json={"storage": {"max_bytes": None}})
    api.set_settings(bundle_max_bytes=len(second) - 1)
    r = put(api, org, org.owner, second, p2.digest)
    assert r.status_code == 413 and r.json()["error"] == "bundle_too_large"
    assert "CSHARE_BUNDLE_MAX_BYTES" in r.json()["detail"]


def _deploy(api: ApiClient, org: OrgSetup, digest: str) -> Any:
    return api.post(
        f"/orgs/{org.slug}/deployments",
        org.owner,
        json={"name": "hello", "entrypoint": FLOW, "code": {"kind": "bundle", "digest": digest}},
    )


def _token(db: Database, job_id: str) -> str:
    with db.transaction() as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job_tokens.issue_job_token(s, job, grace_s=600)


def test_deployment_job_rerun_and_the_jobs_code(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect], tmp_path: Path, database: Database
) -> None:
    api, org, fake = world
    v1, p1 = bundle(tmp_path, "V = 1\n")
    v2, p2 = bundle(tmp_path, "V = 2\n")

    r = _deploy(api, org, p1.digest)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "bundle_missing" and p1.digest in r.json()["detail"]
    assert fake.upserts == []  # refused before Prefect heard of it

    assert put(api, org, org.owner, v1, p1.digest).status_code == 201
    r = _deploy(api, org, p1.digest)
    assert r.status_code == 201, r.text
    assert r.json()["code"] == {"kind": "bundle", "digest": p1.digest, "size": len(v1), "files": 2}
    upsert = fake.upserts[-1]
    assert upsert["version"] == p1.digest
    assert upsert["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CSHARE_CODE_DIR }}"}}
    ]
    assert upsert["working_directory"] is None

    old = org.submit(org.owner, "hello")
    assert old.status_code == 201, old.text
    old_job = old.json()
    assert old_job["code"]["digest"] == p1.digest

    assert put(api, org, org.owner, v2, p2.digest).status_code == 201
    assert _deploy(api, org, p2.digest).status_code == 200
    new_job = org.submit(org.owner, "hello").json()
    assert new_job["code"]["digest"] == p2.digest
    assert org.job(org.owner, old_job["id"])["code"]["digest"] == p1.digest  # kept

    rerun = api.post(f"/orgs/{org.slug}/jobs/{old_job['id']}/rerun", org.owner)
    assert rerun.status_code == 201, rerun.text
    assert rerun.json()["id"] != old_job["id"]
    assert rerun.json()["code"]["digest"] == p1.digest  # the old code, not the deployment's
    assert rerun.json()["deployment"] == "hello"

    # The job's code: its own token reads it; another job's token does not.
    token = _token(database, old_job["id"])
    code_url = f"/orgs/{org.slug}/jobs/{old_job['id']}/code"
    got = api.client.get("/api/v1" + code_url, headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200, got.text
    assert got.content == v1
    assert "sha256:" + hashlib.sha256(got.content).hexdigest() == p1.digest
    other_token = _token(database, new_job["id"])
    refused = api.client.get(
        "/api/v1" + code_url, headers={"Authorization": f"Bearer {other_token}"}
    )
    assert refused.status_code == 404
    # The token may not list bundles or read them by digest (job-token scope).
    scope = api.client.get(
        f"/api/v1/orgs/{org.slug}/bundles/{p1.digest}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert scope.status_code == 403 and scope.json()["error"] == "job_token_scope"
    # Members: the job's owner reads it, another member does not see the job.
    assert api.get(code_url, org.owner).content == v1
    bob = org.add_member()
    assert api.get(code_url, bob).status_code == 404


# ------------------------------------------------------------------ `cshare deploy`

JOB_FLOW = """\
from prefect import flow

from helpers.values import VALUE


@flow
def job(n: int = 1) -> int:
    return n * VALUE
"""


def test_cli_deploy_packs_uploads_once_and_refuses_too_large(
    sqlite_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from api.app import create_app
    from api.cli.main import app as cli_app
    from tests.support import serve_in_thread

    project = tmp_path / "proj"
    (project / "flows").mkdir(parents=True)
    (project / "helpers").mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (project / ".gitignore").write_text("*.bin\n")
    (project / "flows" / "job.py").write_text(JOB_FLOW)
    (project / "helpers" / "__init__.py").write_text("")
    (project / "helpers" / "values.py").write_text("VALUE = 3\n")
    (project / "weights.bin").write_bytes(b"w" * 50_000)
    # `cshare deploy` loads the flow here (its parameter schema): the project root is
    # importable then, as on the machines (`helpers` imports from flows/job.py).
    monkeypatch.setattr(sys, "path", list(sys.path))

    fake = RecordingPrefect()
    with jobs_app(sqlite_database, fake) as api:
        org = setup_org(api, f"cl{uuid.uuid4().hex[:6]}")
    with serve_in_thread(create_app(None, sqlite_database, fake)) as url:  # type: ignore[arg-type]
        env = {
            "CSHARE_API_URL": url.removesuffix("/api/v1"),
            "CSHARE_TOKEN": org.owner.token,
            "CSHARE_CONFIG": str(tmp_path / "cli.toml"),
            "CSHARE_ORG": org.slug,
            "COLUMNS": "240",
        }
        runner = CliRunner()
        target = f"{project / 'flows' / 'job.py'}:job"

        def deploy(**extra_env: str) -> Any:
            return runner.invoke(
                cli_app, ["deploy", target, "--name", "job"], env={**env, **extra_env}
            )

        first = deploy()
        assert first.exit_code == 0, (first.stdout, first.stderr)
        assert "Code bundle sha256:" in first.stdout and "(uploaded)" in first.stdout
        assert "5 files" in first.stdout  # weights.bin stayed behind
        dep = api_get(url, org, "/deployments/job")
        assert dep["entrypoint"] == "flows/job.py:job"
        digest = dep["code"]["digest"]
        assert fake.upserts[-1]["version"] == digest

        again = deploy()
        assert again.exit_code == 0 and "(already there)" in again.stdout, again.stdout

        # A job shows its code: `cshare job show` and `cshare lineage --job`.
        job = org.submit(org.owner, "job").json()
        shown = runner.invoke(cli_app, ["job", "show", job["id"]], env=env)
        assert shown.exit_code == 0 and f"bundle {digest[:19]} (5 files" in shown.stdout
        graph = runner.invoke(cli_app, ["lineage", "--job", job["id"]], env=env)
        assert graph.exit_code == 0, (graph.stdout, graph.stderr)
        assert f"code: bundle {digest[:19]}" in graph.stdout, graph.stdout
        assert api_get(url, org, "/deployments/job")["code"]["digest"] == digest

        (project / ".gitignore").write_text("")  # now weights.bin would travel
        (project / "helpers" / "values.py").write_text("VALUE = 4\n")
        refused = deploy(CSHARE_BUNDLE_MAX_BYTES="20000")
        assert refused.exit_code == 1
        assert "weights.bin" in refused.stderr and "CSHARE_BUNDLE_MAX_BYTES" in refused.stderr
        assert api_get(url, org, "/deployments/job")["code"]["digest"] == digest  # unchanged

        # A prefect.yaml without pull steps ships its project the same way.
        (project / "prefect.yaml").write_text(
            "deployments:\n  - name: yjob\n    entrypoint: flows/job.py:job\n"
        )
        from_yaml = runner.invoke(cli_app, ["deploy", str(project / "prefect.yaml")], env=env)
        assert from_yaml.exit_code == 0, (from_yaml.stdout, from_yaml.stderr)
        ydep = api_get(url, org, "/deployments/yjob")
        assert ydep["entrypoint"] == "flows/job.py:job"
        assert ydep["code"]["digest"] not in (None, digest)


def api_get(url: str, org: OrgSetup, path: str) -> Any:
    import httpx

    r = httpx.get(
        f"{url}/orgs/{org.slug}{path}",
        headers={"Authorization": f"Bearer {org.owner.token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_schedules_jobs_run_the_deployments_code(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect], tmp_path: Path, database: Database
) -> None:
    from flows.dispatch.dispatcher import Dispatcher
    from tests.integration.test_jobs_support import settings_with

    api, org, fake = world
    data, packed = bundle(tmp_path, "V = 1\n")
    assert put(api, org, org.owner, data, packed.digest).status_code == 201
    assert _deploy(api, org, packed.digest).status_code == 201
    r = api.post(
        f"/orgs/{org.slug}/schedules", org.owner, json={"deployment": "hello", "cron": "* * * * *"}
    )
    assert r.status_code == 201, r.text
    gateway: Any = fake  # the in-memory stand-in of PrefectGateway
    Dispatcher(database, gateway, settings_with(dispatcher_adopt_horizon_s=150)).run_once()
    fired = [
        j
        for j in api.get(f"/orgs/{org.slug}/jobs", org.owner).json()["items"]
        if j["source"] == "schedule"
    ]
    assert fired, "the dispatcher fired the schedule"
    assert {j["code"]["digest"] for j in fired} == {packed.digest}


def test_the_dataset_collector_keeps_an_object_that_is_also_a_bundle(
    world: tuple[ApiClient, OrgSetup, RecordingPrefect], tmp_path: Path, database: Database
) -> None:
    from datasets import catalog
    from orgs.config import get_settings

    api, org, _ = world
    data, packed = bundle(tmp_path, "SHARED = 1\n")
    # The same bytes as a dataset version first, then as a bundle: one stored object.
    assert (
        api.post(f"/orgs/{org.slug}/datasets", org.owner, json={"name": "same"}).status_code == 201
    )
    r = api.post(
        f"/orgs/{org.slug}/datasets/same/versions",
        org.owner,
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    assert put(api, org, org.owner, data, packed.digest).status_code == 201
    assert api.delete(f"/orgs/{org.slug}/datasets/same", org.owner).status_code == 200
    with database.session() as s:
        catalog.collect_garbage(s, get_settings())
        s.commit()
    assert _deploy(api, org, packed.digest).status_code == 201
    job = org.submit(org.owner, "hello").json()
    got = api.get(f"/orgs/{org.slug}/jobs/{job['id']}/code", org.owner)
    assert got.status_code == 200 and got.content == data
