"""One dataset test module, run against every kind of store an organization can use:
the installation's default (local disk), S3 (moto's server), OpenStack Swift through its
S3 API (moto standing in as the S3-compatible endpoint), Azure Blob (Azurite) and Google
Cloud Storage (gcp-storage-emulator). Each is configured through the API the way an
admin does, with its credentials kept sealed, and then used the way members do:
upload, versioned download verified by content address, delete.

The read-only input on a machine and the outputs to the store run with a real agent in
tests/e2e/test_job_datasets.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from api.app import create_app
from api.cli.main import app as cli_app
from datasets import stores
from datasets.models import DataStore
from datasets.storage import Storage
from flows.models import Deployment, Job, Project
from orgs.config import get_settings
from orgs.db import Database
from orgs.models import Organization
from tests.azurite_server import ACCOUNT, ACCOUNT_KEY
from tests.integration.test_datasets import job_token, make_job
from tests.s3_server import S3_REGION
from tests.support import ApiClient, Person, serve_in_thread

KINDS = ["default", "s3", "swift", "azure", "gcs"]
ORG_KEY = "ORGKEY0000000001"
ORG_SECRET = "org-secret-access-key-0001"


@dataclass
class Store:
    kind: str
    body: dict[str, Any]  # the PUT /datastore body
    secrets: tuple[str, ...]  # what must never be shown


def _store(kind: str, request: pytest.FixtureRequest) -> Store:
    get = request.getfixturevalue
    if kind == "default":
        return Store(kind, {"kind": "default"}, ())
    if kind in ("s3", "swift"):
        # moto accepts any key; Swift's S3 API takes EC2-style credentials the same way.
        body = {
            "kind": kind,
            "bucket": get("s3_bucket"),
            "endpoint_url": get("s3_endpoint"),
            "region": S3_REGION,
            "access_key_id": ORG_KEY,
            "secret_access_key": ORG_SECRET,
        }
        return Store(kind, body, (ORG_SECRET,))
    if kind == "azure":
        body = {
            "kind": "azure",
            "account": ACCOUNT,
            "container": get("azure_container"),
            "prefix": "cshare",
            "endpoint_url": get("azurite_endpoint"),
            "account_key": ACCOUNT_KEY,
        }
        return Store(kind, body, (ACCOUNT_KEY,))
    body = {"kind": "gcs", "bucket": get("gcs_bucket"), "endpoint_url": get("gcs_endpoint")}
    return Store(kind, body, ())


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest) -> Store:
    return _store(request.param, request)


@dataclass
class World:
    slug: str
    owner: Person
    alice: Person


@pytest.fixture
def world(api: ApiClient) -> World:
    owner, alice = api.signup(), api.signup()
    slug = api.create_org(owner)
    api.add_member(slug, owner, alice)
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    return World(slug, owner, alice)


def configure(api: ApiClient, world: World, store: Store) -> dict[str, Any]:
    r = api.put(f"/orgs/{world.slug}/datastore", world.owner, json=store.body)
    assert r.status_code == 200, r.text
    shown: dict[str, Any] = r.json()
    assert shown["kind"] == store.kind
    return shown


def backend_of(api: ApiClient, world: World) -> Storage:
    with api.db.session(write=False) as session:
        org = session.scalars(select(Organization).where(Organization.slug == world.slug)).one()
        active = stores.active_store(session, org.id)
        settings = cast(Any, api.client.app).state.settings
        return stores.backend_for(session, settings, active.id if active else None)


def upload(api: ApiClient, world: World, name: str, data: bytes, sha: str | None = None) -> Any:
    headers = {"Content-Type": "application/octet-stream"}
    if sha:
        headers["X-Content-SHA256"] = sha
    r = api.post(
        f"/orgs/{world.slug}/datasets/{name}/versions", world.alice, content=data, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()


def download(api: ApiClient, world: World, name: str, version: str) -> tuple[bytes, str]:
    r = api.get(f"/orgs/{world.slug}/datasets/{name}/versions/{version}/download", world.alice)
    assert r.status_code == 200, r.text
    return r.content, r.headers["X-Content-SHA256"]


def test_upload_versioned_download_and_delete(api: ApiClient, world: World, store: Store) -> None:
    shown = configure(api, world, store)
    for secret in store.secrets:
        assert secret not in json.dumps(shown)
    r = api.post(f"/orgs/{world.slug}/datasets", world.alice, json={"name": "images"})
    assert r.status_code == 201, r.text

    # Two versions: a small one (one write) and one larger than a part (streamed in
    # parts), the second announced by its content address.
    first = os.urandom(4000)
    second = os.urandom(get_settings().dataset_s3_part_bytes + 70_000)
    second_sha = hashlib.sha256(second).hexdigest()
    upload(api, world, "images", first)
    upload(api, world, "images", second, second_sha)

    backend = backend_of(api, world)
    assert backend.kind == ("local" if store.kind == "default" else backend.kind)
    for version, data in ((1, first), (2, second), ("latest", second)):
        got, sha = download(api, world, "images", str(version))
        assert sha == hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        assert got == data
        assert backend.exists(sha)  # the bytes are in this store, under their address

    # A wrong announced address stores nothing and answers 422.
    wrong = hashlib.sha256(b"other").hexdigest()
    r = api.post(
        f"/orgs/{world.slug}/datasets/images/versions",
        world.alice,
        content=b"x" * 5000,
        headers={"Content-Type": "application/octet-stream", "X-Content-SHA256": wrong},
    )
    assert r.status_code == 422 and r.json()["error"] == "checksum_mismatch", r.text
    assert not backend.exists(hashlib.sha256(b"x" * 5000).hexdigest())

    r = api.delete(f"/orgs/{world.slug}/datasets/images", world.alice)
    assert r.status_code == 200, r.text
    assert r.json()["purged_objects"] == 2
    for data in (first, second):
        assert not backend.exists(hashlib.sha256(data).hexdigest())


def test_credentials_are_sealed_and_never_shown(api: ApiClient, world: World, store: Store) -> None:
    if not store.secrets:
        pytest.skip(f"a {store.kind} store here has no secret to keep")
    configure(api, world, store)
    shown = api.get(f"/orgs/{world.slug}/datastore", world.alice)
    audit = api.get(f"/orgs/{world.slug}/audit", world.owner)
    with api.db.session(write=False) as session:
        raw = [json.dumps(c) for c in session.scalars(select(DataStore.credentials)) if c]
    assert raw
    for secret in store.secrets:
        for text in (shown.text, audit.text, *raw):
            assert secret not in text


BAD: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], str]]] = {
    "swift": lambda b: ({**b, "endpoint_url": None}, "endpoint_url"),
    "azure": lambda b: ({**b, "account": "Not_An_Account"}, "account"),
    "gcs": lambda b: ({**b, "bucket": "UPPER"}, "bucket"),
    "s3": lambda b: ({**b, "bucket": "a"}, "bucket"),
}


def test_bad_settings_name_the_field(api: ApiClient, world: World, store: Store) -> None:
    if store.kind not in BAD:
        pytest.skip("the default store has no settings")
    body, field = BAD[store.kind](store.body)
    r = api.put(f"/orgs/{world.slug}/datastore", world.owner, json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    # A wrong key is found by the probe, before anything is saved.
    if store.kind == "azure":
        other = {**store.body, "account_key": "d3Jvbmcta2V5"}
        r = api.put(f"/orgs/{world.slug}/datastore", world.owner, json=other)
        assert r.status_code == 422 and r.json()["field"] == "container", r.text
        assert "d3Jvbmcta2V5" not in r.text
    # Members are not admins: 403, nothing changes.
    r = api.put(f"/orgs/{world.slug}/datastore", world.alice, json=store.body)
    assert r.status_code == 403, r.text


@pytest.mark.parametrize("kind", ["azure", "gcs"])
def test_custom_cloud_endpoints_need_the_operators_allowlist(
    api: ApiClient, world: World, kind: str, request: pytest.FixtureRequest
) -> None:
    """The Azure and GCS clients connect on their own: an endpoint other than the cloud's
    is used only where the operator allowed it, when saved and when used."""
    store = _store(kind, request)
    api.set_settings(store_endpoint_allowlist="")
    r = api.put(f"/orgs/{world.slug}/datastore", world.owner, json=store.body)
    assert r.status_code == 422 and r.json()["field"] == "endpoint_url", r.text
    assert r.json()["error"] == "store_endpoint_refused"
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    configure(api, world, store)
    r = api.post(f"/orgs/{world.slug}/datasets", world.alice, json={"name": "d"})
    assert r.status_code == 201
    upload(api, world, "d", b"allowed")
    # Narrowed after saving: the saved store reaches nothing any more.
    api.set_settings(store_endpoint_allowlist="")
    r = api.get(f"/orgs/{world.slug}/datasets/d/versions/latest/download", world.alice)
    assert r.status_code == 403 and r.json()["error"] == "store_endpoint_refused", r.text


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def served(sqlite_database: Database) -> Iterator[str]:
    settings = get_settings().model_copy(update={"store_endpoint_allowlist": "127.0.0.1/32"})
    with serve_in_thread(create_app(settings, sqlite_database)) as url:
        yield url.removesuffix("/api/v1")


@pytest.mark.parametrize("kind", ["swift", "azure", "gcs"])
def test_cli_configures_each_store(
    served: str,
    sqlite_database: Database,
    tmp_path: Path,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    store = _store(kind, request)
    b = store.body
    args = {
        "swift": [
            "--container", b.get("bucket", ""), "--endpoint-url", b.get("endpoint_url", ""),
            "--region", S3_REGION, "--access-key-id", ORG_KEY, "--secret-access-key", ORG_SECRET,
        ],
        "azure": [
            "--account", ACCOUNT, "--container", b.get("container", ""),
            "--endpoint-url", b.get("endpoint_url", ""), "--secret", ACCOUNT_KEY,
        ],
        "gcs": ["--bucket", b.get("bucket", ""), "--endpoint-url", b.get("endpoint_url", "")],
    }[kind]  # fmt: skip
    with ApiClient.start(sqlite_database) as api:
        owner = api.signup()
        slug = api.create_org(owner)
        env = {
            "CSHARE_CONFIG": str(tmp_path / "cli.toml"),
            "CSHARE_API_URL": served,
            "CSHARE_TOKEN": owner.token,
            "CSHARE_ORG": slug,
            "COLUMNS": "240",
        }

        def cli(*words: str) -> str:
            result = CliRunner().invoke(cli_app, list(words), env=env)
            assert result.exit_code == 0, (words, result.stdout, result.stderr, result.exception)
            return str(result.stdout)

        said = cli("dataset", "store", kind, *args)
        shown = cli("dataset", "store", "show")
        assert kind.capitalize()[:3].lower() in said.lower()
        for secret in store.secrets:
            assert secret not in said and secret not in shown
        data = os.urandom(20_000)
        (tmp_path / "in.bin").write_bytes(data)
        cli("dataset", "upload", "blobs", str(tmp_path / "in.bin"), "--create")
        cli("dataset", "download", "blobs", "--output", str(tmp_path / "out.bin"))
        assert (tmp_path / "out.bin").read_bytes() == data

        # The same store as a project's default for its jobs' outputs, and back.
        r = api.post(f"/orgs/{slug}/projects", owner, json={"name": "vision"})
        assert r.status_code == 201, r.text
        assert "default store" in cli("dataset", "store", "show", "--project", "vision")
        cli("dataset", "store", kind, *args, "--project", "vision")
        shown_project = cli("dataset", "store", "show", "--project", "vision", "--json")
        assert json.loads(shown_project)["kind"] == kind
        cli("dataset", "store", "default", "--project", "vision")
        shown_project = cli("dataset", "store", "show", "--project", "vision", "--json")
        assert json.loads(shown_project)["kind"] == "default"


# --------------------------------------------------------------------------- project default


def _job_in_project(api: ApiClient, world: World, project: str) -> str:
    """A running job of a deployment in `project`, and the token its flow would get."""
    with api.db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == world.slug)).one()
        found = s.scalars(
            select(Project).where(Project.org_id == org.id, Project.name == project)
        ).one()
        deployment = Deployment(
            org_id=org.id,
            project_id=found.id,
            name=f"train-{uuid.uuid4().hex[:6]}",
            flow_name="train",
            entrypoint="flows/train.py:train",
            machine_type="cpu",
        )
        s.add(deployment)
        s.flush()
        deployment_id = deployment.id
    job = make_job(api.db, world.slug, str(world.alice.id), state="running")
    with api.db.transaction() as s:
        row = s.get(Job, job.id)
        assert row is not None
        row.deployment_id = deployment_id
    return job_token(api.db, job)


def test_job_outputs_go_to_the_projects_default_store(
    api: ApiClient, world: World, store: Store
) -> None:
    """A project may name its default store: its jobs' outputs go there, everything else
    to the organization's store (here the installation's own). Without one ("default"),
    outputs go to the organization's store too."""
    r = api.post(f"/orgs/{world.slug}/projects", world.owner, json={"name": "vision"})
    assert r.status_code == 201, r.text
    url = f"/orgs/{world.slug}/projects/vision/datastore"
    r = api.put(url, world.alice, json=store.body)
    assert r.status_code == 403, r.text  # admins only
    r = api.put(url, world.owner, json=store.body)
    assert r.status_code == 200 and r.json()["kind"] == store.kind, r.text
    shown = api.get(url, world.alice)
    assert shown.status_code == 200 and shown.json()["kind"] == store.kind
    for secret in store.secrets:
        assert secret not in shown.text and secret not in r.text
    assert api.get(f"/orgs/{world.slug}/datastore", world.alice).json()["kind"] == "default"
    outsider = api.signup()
    assert api.get(url, outsider).status_code == 404
    assert api.get(f"/orgs/{world.slug}/projects/nope/datastore", world.owner).status_code == 404

    api.post(f"/orgs/{world.slug}/datasets", world.alice, json={"name": "models"})
    token = _job_in_project(api, world, "vision")
    output = os.urandom(30_000)
    r = api.client.post(
        f"/api/v1/orgs/{world.slug}/datasets/models/versions",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
        content=output,
    )
    assert r.status_code == 201, r.text
    by_hand = os.urandom(30_000)
    upload(api, world, "models", by_hand)

    settings = cast(Any, api.client.app).state.settings
    with api.db.session(write=False) as session:
        org = session.scalars(select(Organization).where(Organization.slug == world.slug)).one()
        project = session.scalars(select(Project).where(Project.org_id == org.id)).all()
        vision = next(p for p in project if p.name == "vision")
        project_store = stores.active_store(session, org.id, vision.id)
        org_backend = stores.backend_for(session, settings, None)
        project_backend = stores.backend_for(
            session, settings, project_store.id if project_store else None
        )
    out_sha = hashlib.sha256(output).hexdigest()
    hand_sha = hashlib.sha256(by_hand).hexdigest()
    assert project_backend.exists(out_sha)
    assert org_backend.exists(hand_sha)
    if store.kind == "default":
        assert project_store is None  # no project store: the organization's
    else:
        assert not org_backend.exists(out_sha) and not project_backend.exists(hand_sha)
    for version, data in (("1", output), ("2", by_hand)):
        got, sha = download(api, world, "models", version)
        assert got == data and sha == hashlib.sha256(data).hexdigest()

    # Removing the project's store: what is stored keeps reading from where its bytes are.
    assert api.put(url, world.owner, json={"kind": "default"}).json()["kind"] == "default"
    got, _sha = download(api, world, "models", "1")
    assert got == output

    # So does deleting the project while its store holds outputs.
    assert api.put(url, world.owner, json=store.body).status_code == 200
    with api.db.transaction() as s:
        for job in s.scalars(select(Job).where(Job.state == "running")):
            job.state = "completed"
    assert api.delete(f"/orgs/{world.slug}/projects/vision", world.owner).status_code == 204
    got, _sha = download(api, world, "models", "1")
    assert got == output
