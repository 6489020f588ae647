"""Datasets through the API, on SQLite and PostgreSQL (the `api` fixture), with the
default local store (and the org's own S3 store where it matters).

Covers: the catalog round trip, names, access (restricted = 404 for outsiders on read,
download and job inputs), deduplication, interrupted and mismatching uploads, checksum
verification on download (a damaged object is never returned as good data), directory
versions, tombstones on delete, job tokens, and the org data store on S3.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import func, select

from api.app import create_app
from datasets import catalog, wire
from datasets.models import Blob, Dataset, DatasetVersion, JobInput
from datasets.storage import object_key
from flows import job_data, job_tokens
from flows.dispatch.housekeeping import DatasetGarbageCollector
from flows.models import Deployment, Job
from orgs.config import get_settings
from orgs.context import member_context
from orgs.db import Database
from orgs.models import Organization, User
from policies.errors import NotFound
from tests.s3_server import S3_REGION
from tests.support import ApiClient, Person, serve_in_thread


@dataclass
class World:
    slug: str
    owner: Person
    admin: Person
    alice: Person  # a member, creates datasets
    bob: Person  # a member outside restricted datasets


@pytest.fixture
def world(api: ApiClient) -> World:
    owner, admin, alice, bob = (api.signup() for _ in range(4))
    slug = api.create_org(owner)
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, alice)
    api.add_member(slug, owner, bob)
    return World(slug, owner, admin, alice, bob)


def ds(world: World, name: str = "") -> str:
    return f"/orgs/{world.slug}/datasets" + (f"/{name}" if name else "")


def create(api: ApiClient, world: World, who: Person, name: str, **body: Any) -> dict[str, Any]:
    r = api.post(ds(world), who, json={"name": name, **body})
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def upload(
    api: ApiClient, world: World, who: Person, name: str, data: bytes, **kw: Any
) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream", **kw.pop("headers", {})}
    return api.post(f"{ds(world, name)}/versions", who, content=data, headers=headers, **kw)


def download(api: ApiClient, world: World, who: Person, name: str, version: str = "latest"):
    return api.get(f"{ds(world, name)}/versions/{version}/download", who)


def unique(size: int = 4096) -> bytes:
    return os.urandom(size)


def store_path(sha: str) -> Path:
    return get_settings().resolved_dataset_dir() / object_key(sha)


def temp_files() -> list[Path]:
    """What uploads in progress hold in the local store's temp dir."""
    tmp = get_settings().resolved_dataset_dir() / "tmp"
    return sorted(tmp.glob("*")) if tmp.exists() else []


def make_job(
    db: Database,
    slug: str,
    user_id: str,
    inputs: list[Any] | None = None,
    *,
    state: str = "completed",
    outputs: list[str] | None = None,
) -> Job:
    """A job row straight into the ledger (no Prefect): what lineage and inputs need.
    `state="running"` for a job whose token is used (a token of an ended job is dead)."""
    with db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        job = Job(
            id=uuid.uuid4(),
            org_id=org.id,
            user_id=uuid.UUID(user_id),
            machine_type="cpu",
            state=state,
            memory_mb=512,
            max_runtime_s=600,
            inputs=list(inputs or []),
            parameters={"lr": 0.1},
            job_metadata={job_data.OUTPUTS_KEY: outputs} if outputs else {},
        )
        s.add(job)
        s.flush()
        job_data.resolve_inputs(s, job)  # pins "NAME[@V]" and records them, as a claim would
    return job


def job_token(db: Database, job: Job, *, grace_s: float = 600) -> str:
    """The token the claim would hand the job's flow."""
    with db.transaction() as s:
        fresh = s.get(Job, job.id)
        assert fresh is not None
        return job_tokens.issue_job_token(s, fresh, grace_s=grace_s)


def as_job(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def upload_as_job(
    api: ApiClient, world: World, token: str, name: str, data: bytes, **kw: Any
) -> httpx.Response:
    """Upload as the job's flow does (`flows.runtime.save_output`): an output of the job."""
    headers = as_job(token, **{"Content-Type": "application/octet-stream", **kw.pop("headers", {})})
    response: httpx.Response = api.client.post(
        f"/api/v1{ds(world, name)}/versions", headers=headers, content=data, **kw
    )
    return response


# --------------------------------------------------------------------------- round trip


def test_create_upload_list_show_download(api: ApiClient, world: World) -> None:
    created = create(api, world, world.alice, "images", description="Cats and dogs")
    assert created["visibility"] == "org" and created["version_count"] == 0
    data = unique(300_000)
    sha = hashlib.sha256(data).hexdigest()
    r = upload(api, world, world.alice, "images", data, params={"filename": "cats.bin"})
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert (v1["version"], v1["sha256"], v1["size"], v1["kind"]) == (1, sha, len(data), "file")
    assert v1["filename"] == "cats.bin" and v1["created_by"]["name"] == world.alice.name
    r = upload(api, world, world.alice, "images", b"version two")
    assert r.status_code == 201 and r.json()["version"] == 2

    listed = api.get(ds(world), world.bob).json()
    [item] = [d for d in listed["items"] if d["name"] == "images"]
    assert item["version_count"] == 2
    assert item["size"] == len(data) + len(b"version two")
    assert item["latest_version"]["version"] == 2

    shown = api.get(ds(world, "images"), world.bob).json()
    assert [v["version"] for v in shown["versions"]] == [2, 1]
    assert shown["versions"][1]["sha256"] == sha
    assert shown["can_write"] is False

    r = download(api, world, world.bob, "images", "1")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["x-content-sha256"] == sha
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["content-length"] == str(len(data))
    assert "cats.bin" in r.headers["content-disposition"]
    assert download(api, world, world.bob, "images").content == b"version two"
    assert download(api, world, world.bob, "images", "9").status_code == 404


def test_list_is_paginated(api: ApiClient, world: World) -> None:
    for i in range(5):
        create(api, world, world.alice, f"page-{i}")
    first = api.get(ds(world), world.alice, params={"limit": 2}).json()
    second = api.get(ds(world), world.alice, params={"limit": 2, "offset": 2}).json()
    assert first["total"] == 5 and [d["name"] for d in first["items"]] == ["page-0", "page-1"]
    assert [d["name"] for d in second["items"]] == ["page-2", "page-3"]


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "a..b",
        "a/b",
        "a\\b",
        "tab\there",
        "nul\x00",
        "bell\x07",
        "new\nline",
        "x" * 300,
        ".hidden",
        "-dash",
        "",
        "é",
    ],
    ids=[
        "dotdot",
        "inner-dotdot",
        "slash",
        "backslash",
        "tab",
        "nul",
        "bell",
        "newline",
        "300-chars",
        "leading-dot",
        "leading-dash",
        "empty",
        "non-ascii",
    ],
)
def test_bad_names_are_refused_naming_the_field(api: ApiClient, world: World, name: str) -> None:
    r = api.post(ds(world), world.alice, json={"name": name})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "name"


def test_duplicate_name_is_a_conflict(api: ApiClient, world: World) -> None:
    create(api, world, world.alice, "dup")
    r = api.post(ds(world), world.bob, json={"name": "dup"})
    assert r.status_code == 409


# --------------------------------------------------------------------------- access


def test_restricted_dataset_is_invisible_to_outsiders(api: ApiClient, world: World) -> None:
    create(api, world, world.alice, "secret", visibility="restricted", members=[world.admin.name])
    assert upload(api, world, world.alice, "secret", b"classified").status_code == 201
    # Bob is a member of the org, not of the dataset: it does not exist for him.
    assert api.get(ds(world, "secret"), world.bob).status_code == 404
    assert download(api, world, world.bob, "secret").status_code == 404
    assert download(api, world, world.bob, "secret", "1").status_code == 404
    assert upload(api, world, world.bob, "secret", b"x").status_code == 404
    assert api.put(f"{ds(world, 'secret')}/access", world.bob, json={}).status_code == 404
    assert api.delete(ds(world, "secret"), world.bob).status_code == 404
    r = api.get("/orgs/" + world.slug + "/lineage", world.bob, params={"dataset": "secret"})
    assert r.status_code == 404
    assert "secret" not in [d["name"] for d in api.get(ds(world), world.bob).json()["items"]]
    # The creator, listed members and admins read it.
    for who in (world.alice, world.admin, world.owner):
        assert download(api, world, who, "secret").content == b"classified"
    # Once listed, Bob reads it; once restricted again without him, he does not.
    r = api.put(f"{ds(world, 'secret')}/access", world.alice, json={"members": [world.bob.id]})
    assert r.status_code == 200 and [m["name"] for m in r.json()["members"]] == [world.bob.name]
    assert download(api, world, world.bob, "secret").content == b"classified"
    api.put(f"{ds(world, 'secret')}/access", world.alice, json={"members": []})
    assert download(api, world, world.bob, "secret").status_code == 404


def test_restricted_input_is_refused_at_submission(api: ApiClient, world: World) -> None:
    """`pin_inputs` (what a submission calls) answers 404 for an unreadable dataset."""
    create(api, world, world.alice, "private-in", visibility="restricted")
    upload(api, world, world.alice, "private-in", b"data")
    with api.db.session() as s:
        org = s.scalars(select(Organization).where(Organization.slug == world.slug)).one()
        bob = s.get(User, uuid.UUID(world.bob.id))
        alice = s.get(User, uuid.UUID(world.alice.id))
        assert bob is not None and alice is not None
        with pytest.raises(NotFound):
            catalog.pin_inputs(s, member_context(s, org.slug, bob), [{"dataset": "private-in"}])
        pinned = catalog.pin_inputs(s, member_context(s, org.slug, alice), ["private-in"])
        assert pinned[0]["version"] == 1 and pinned[0]["name"] == "private-in"


def test_dataset_access_rule_rejects_a_submission_naming_an_unreadable_input(
    api: ApiClient, world: World
) -> None:
    """Through the jobs API: admission's `dataset_access` rule says no (403, the rule's
    name as the error), nothing is stored; a readable input passes that rule."""
    create(api, world, world.alice, "private-in", visibility="restricted")
    upload(api, world, world.alice, "private-in", b"data")
    create(api, world, world.alice, "open-in")
    upload(api, world, world.alice, "open-in", b"data")
    with api.db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == world.slug)).one()
        s.add(
            Deployment(
                org_id=org.id, name="d", flow_name="f", entrypoint="f.py:f", machine_type="cpu"
            )
        )
    jobs = f"/orgs/{world.slug}/jobs"
    body = {"deployment": "d", "inputs": [{"dataset": "private-in"}, {"dataset": "open-in"}]}
    r = api.post(jobs, world.bob, json=body)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "dataset_access"
    assert "may not read" in r.json()["detail"]
    r = api.post(f"{jobs}/explain", world.bob, json=body)
    assert r.status_code == 200, r.text
    failed = [o["rule"] for o in r.json()["rules"] if o["status"] == "fail"]
    assert failed == ["dataset_access"]
    r = api.post(
        f"{jobs}/explain", world.bob, json={"deployment": "d", "inputs": [{"dataset": "open-in"}]}
    )
    assert [o["status"] for o in r.json()["rules"] if o["rule"] == "dataset_access"] == ["pass"]
    with api.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_only_creator_and_admins_write(api: ApiClient, world: World) -> None:
    create(api, world, world.alice, "owned")
    assert upload(api, world, world.bob, "owned", b"x").status_code == 403
    r = api.put(f"{ds(world, 'owned')}/access", world.bob, json={"visibility": "restricted"})
    assert r.status_code == 403
    assert api.delete(ds(world, "owned"), world.bob).status_code == 403
    assert upload(api, world, world.admin, "owned", b"by an admin").status_code == 201
    r = api.put(f"{ds(world, 'owned')}/access", world.admin, json={"members": ["nobody-here"]})
    assert r.status_code == 422 and r.json()["field"] == "members"


def test_audit_rows_for_create_access_delete(api: ApiClient, world: World) -> None:
    create(api, world, world.alice, "audited")
    api.put(f"{ds(world, 'audited')}/access", world.alice, json={"visibility": "restricted"})
    assert api.delete(ds(world, "audited"), world.alice).status_code == 200
    r = api.get(f"/orgs/{world.slug}/audit", world.owner, params={"action": "dataset.*"})
    actions = [e["action"] for e in r.json()["items"]]
    assert actions == ["dataset.deleted", "dataset.access_changed", "dataset.created"]


# --------------------------------------------------------------------------- bytes


def test_identical_bytes_are_stored_once(api: ApiClient, world: World) -> None:
    data = unique(100_000)
    sha = hashlib.sha256(data).hexdigest()
    create(api, world, world.alice, "one")
    create(api, world, world.bob, "two")
    assert upload(api, world, world.alice, "one", data).status_code == 201
    assert upload(api, world, world.bob, "two", data).status_code == 201
    # The same content again on top of itself: a retry, not a new version.
    again = upload(api, world, world.alice, "one", data)
    assert again.status_code == 200 and again.json()["version"] == 1
    with api.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Blob).where(Blob.sha256 == sha)) == 1
    assert store_path(sha).stat().st_size == len(data)
    assert download(api, world, world.bob, "one").content == data


def test_announced_checksum_must_match(api: ApiClient, world: World) -> None:
    create(api, world, world.alice, "checked")
    data = unique()
    wrong = hashlib.sha256(b"other").hexdigest()
    r = upload(api, world, world.alice, "checked", data, headers={"X-Content-SHA256": wrong})
    assert r.status_code == 422 and r.json()["error"] == "checksum_mismatch"
    assert not store_path(hashlib.sha256(data).hexdigest()).exists()
    assert temp_files() == []
    right = hashlib.sha256(data).hexdigest()
    r = upload(api, world, world.alice, "checked", data, headers={"X-Content-SHA256": right})
    assert r.status_code == 201
    assert api.get(ds(world, "checked"), world.alice).json()["versions"][0]["version"] == 1


def test_interrupted_upload_leaves_no_version(api: ApiClient, world: World) -> None:
    """The client's body stream raises half way: nothing becomes visible."""
    create(api, world, world.alice, "halfway")

    def body() -> Iterator[bytes]:
        yield unique(300_000)
        raise ConnectionResetError("the client died")

    try:
        r = upload(api, world, world.alice, "halfway", body())  # type: ignore[arg-type]
        assert r.status_code in (400, 422), r.text
    except ConnectionResetError:
        pass  # the test client may pass the error back instead of an answer
    shown = api.get(ds(world, "halfway"), world.alice).json()
    assert shown["versions"] == []
    assert temp_files() == []
    assert download(api, world, world.alice, "halfway").status_code == 404
    with api.db.session() as s:
        ds_id = s.scalars(select(Dataset.id).where(Dataset.name == "halfway")).one()
        count = s.scalar(
            select(func.count())
            .select_from(DatasetVersion)
            .where(DatasetVersion.dataset_id == ds_id)
        )
        assert count == 0


def test_connection_dropped_mid_upload_over_http(database: Database, tmp_path: Path) -> None:
    """A real server, a real socket closed after half the declared body."""
    app = create_app(get_settings(), database)
    with serve_in_thread(app) as url, ApiClient.start(database) as api:
        alice = api.signup()
        slug = api.create_org(alice)
        create(api, World(slug, alice, alice, alice, alice), alice, "dropped")
        host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        total, sent = 20_000_000, 0
        with socket.create_connection((host, int(port))) as sock:
            head = (
                f"POST /api/v1/orgs/{slug}/datasets/dropped/versions HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {alice.token}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
            )
            sock.sendall(head.encode())
            while sent < total // 2:
                sock.sendall(b"z" * 65536)
                sent += 65536
        deadline = time.monotonic() + 10
        while temp_files() and time.monotonic() < deadline:  # the server notices
            time.sleep(0.05)
        assert temp_files() == []
        r = httpx.get(f"{url}/orgs/{slug}/datasets/dropped", headers=alice.headers)
        assert r.json()["versions"] == []


def test_damaged_object_is_never_returned_as_good_data(
    api: ApiClient, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    create(api, world, world.alice, "fragile")
    data = unique(3 * 1024 * 1024 + 17)  # several chunks
    sha = upload(api, world, world.alice, "fragile", data).json()["sha256"]
    path = store_path(sha)
    path.chmod(0o644)
    damaged = bytearray(data)
    damaged[-5] ^= 0xFF  # same size, one byte flipped near the end
    path.write_bytes(bytes(damaged))
    # In-process: the body comes back short of Content-Length (or the client raises).
    with caplog.at_level(logging.ERROR, logger="cshare.datasets"):
        try:
            r = download(api, world, world.alice, "fragile")
            assert r.content != data and len(r.content) < len(data)
        except Exception as exc:  # the test client re-raising the server's abort
            assert "checksum" in str(exc).lower()
    assert any("checksum mismatch" in rec.getMessage() for rec in caplog.records)
    # Over a real connection the client sees a broken transfer.
    app = create_app(get_settings(), api.db)
    with (
        serve_in_thread(app) as url,
        pytest.raises(httpx.HTTPError),
        httpx.stream(
            "GET",
            f"{url}/orgs/{world.slug}/datasets/fragile/versions/1/download",
            headers=world.alice.headers,
        ) as response,
    ):
        assert response.status_code == 200
        b"".join(response.iter_bytes())


# --------------------------------------------------------------------------- directories


def tar_of(files: dict[str, bytes], *, extra: tarfile.TarInfo | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra)
    return buf.getvalue()


def test_directory_version_round_trip(api: ApiClient, world: World, tmp_path: Path) -> None:
    create(api, world, world.alice, "corpus")
    files = {"a.txt": b"alpha", "sub/b.bin": unique(70_000), "sub/deeper/c": b""}
    manifest = [
        wire.ManifestEntry(p, hashlib.sha256(d).hexdigest(), len(d)) for p, d in files.items()
    ]
    expected = wire.manifest_sha256(manifest)
    r = api.post(
        f"{ds(world, 'corpus')}/versions",
        world.alice,
        content=tar_of(files),
        headers={"Content-Type": "application/x-tar", "X-Content-SHA256": expected},
    )
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["kind"], v["file_count"], v["sha256"]) == ("directory", 3, expected)
    assert v["size"] == sum(len(d) for d in files.values())
    r = download(api, world, world.bob, "corpus")
    assert r.status_code == 200 and r.headers["x-cshare-kind"] == "directory"
    assert int(r.headers["content-length"]) == len(r.content)
    out = tmp_path / "out"
    out.mkdir()
    entries = wire.extract_tar(io.BytesIO(r.content), out)
    assert wire.manifest_sha256(entries) == expected
    assert (out / "sub" / "b.bin").read_bytes() == files["sub/b.bin"]


@pytest.mark.parametrize("bad", ["parent", "absolute", "symlink", "garbage"])
def test_unsafe_archives_are_refused(api: ApiClient, world: World, bad: str) -> None:
    create(api, world, world.alice, f"unsafe-{bad}")
    if bad == "parent":
        body = tar_of({"../escape.txt": b"x"})
    elif bad == "absolute":
        body = tar_of({"/etc/evil": b"x"})
    elif bad == "symlink":
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        body = tar_of({"ok.txt": b"fine"}, extra=link)
    else:
        body = b"this is not a tar stream at all" * 100
    r = api.post(
        f"{ds(world, f'unsafe-{bad}')}/versions",
        world.alice,
        content=body,
        headers={"Content-Type": "application/x-tar"},
    )
    assert r.status_code == 422, r.text
    assert api.get(ds(world, f"unsafe-{bad}"), world.alice).json()["versions"] == []


# --------------------------------------------------------------------------- delete


def test_delete_keeps_used_versions_as_tombstones(api: ApiClient, world: World) -> None:
    create(api, world, world.alice, "used")
    used_data, unused_data = unique(), unique()
    upload(api, world, world.alice, "used", used_data)
    upload(api, world, world.alice, "used", unused_data)
    used_sha = hashlib.sha256(used_data).hexdigest()
    unused_sha = hashlib.sha256(unused_data).hexdigest()
    job = make_job(api.db, world.slug, world.alice.id, inputs=[{"dataset": "used", "version": 1}])
    with api.db.transaction() as s:
        fresh = s.get(Job, job.id)
        assert fresh is not None
        job_data.resolve_inputs(s, fresh)  # pins and records the input
    r = api.delete(ds(world, "used"), world.alice)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "name": "used",
        "deleted_versions": 1,
        "tombstoned_versions": 1,
        "purged_objects": 2,
    }
    assert api.get(ds(world, "used"), world.alice).status_code == 404
    assert not store_path(used_sha).exists() and not store_path(unused_sha).exists()
    with api.db.session() as s:
        tomb = s.scalars(select(DatasetVersion).where(DatasetVersion.sha256 == used_sha)).one()
        assert tomb.tombstoned_at is not None
        assert (
            s.scalar(select(func.count()).select_from(JobInput).where(JobInput.job_id == job.id))
            == 1
        )
    # The job's lineage still shows what it read.
    graph = api.get(f"/orgs/{world.slug}/jobs/{job.id}/lineage", world.alice).json()
    [node] = [n for n in graph["nodes"] if n["type"] == "dataset_version"]
    assert node["dataset"] == "used" and node["tombstoned"] is True
    # The name is free again.
    create(api, world, world.alice, "used")


def test_delete_keeps_bytes_another_dataset_uses(api: ApiClient, world: World) -> None:
    data = unique()
    sha = hashlib.sha256(data).hexdigest()
    for name in ("shared-a", "shared-b"):
        create(api, world, world.alice, name)
        upload(api, world, world.alice, name, data)
    r = api.delete(ds(world, "shared-a"), world.alice)
    assert r.json()["purged_objects"] == 0
    assert store_path(sha).exists()
    assert download(api, world, world.bob, "shared-b").content == data
    api.delete(ds(world, "shared-b"), world.admin)
    assert not store_path(sha).exists()
    # Uploading the same bytes again brings them back (the blob row was only purged).
    create(api, world, world.alice, "shared-c")
    assert upload(api, world, world.alice, "shared-c", data).status_code == 201
    assert download(api, world, world.bob, "shared-c").content == data


# --------------------------------------------------------------------------- jobs


def test_job_token_reaches_only_its_inputs(api: ApiClient, world: World) -> None:
    create(api, world, world.alice, "input-a")
    create(api, world, world.alice, "not-an-input")
    upload(api, world, world.alice, "input-a", b"aaa")
    upload(api, world, world.alice, "not-an-input", b"zzz")
    job = make_job(api.db, world.slug, world.alice.id, inputs=["input-a"], state="running")
    token = job_token(api.db, job)
    bearer = as_job(token)
    r = api.client.get(f"/api/v1/orgs/{world.slug}/jobs/{job.id}/inputs", headers=bearer)
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    assert (item["name"], item["version"]) == ("input-a", 1)
    got = api.client.get("/api/v1" + item["download_path"], headers=bearer)
    assert got.content == b"aaa"
    other = api.client.get(
        f"/api/v1{ds(world, 'not-an-input')}/versions/1/download", headers=bearer
    )
    assert other.status_code == 404
    # Outputs and metadata, marked as this job's.
    create(api, world, world.alice, "results")
    r = upload_as_job(api, world, token, "results", b"result")
    assert r.status_code == 201 and r.json()["produced_by_job_id"] == str(job.id)
    r = api.client.post(
        f"/api/v1/orgs/{world.slug}/jobs/{job.id}/metadata",
        headers=bearer,
        json={"values": {"accuracy": 0.9}},
    )
    assert r.status_code == 200 and r.json()["metadata"] == {"accuracy": 0.9}
    # A job token is not a user token anywhere else (tests/integration/
    # test_job_credentials.py walks every route).
    r = api.client.get(f"/api/v1/orgs/{world.slug}/audit", headers=bearer)
    assert r.status_code == 403 and r.json()["error"] == "job_token_scope"
    # Access is checked again at fetch time: restricting the input cuts the job off.
    api.put(f"{ds(world, 'input-a')}/access", world.owner, json={"visibility": "restricted"})
    with api.db.transaction() as s:
        row = s.scalars(select(Dataset).where(Dataset.name == "input-a")).one()
        row.created_by = uuid.UUID(world.owner.id)  # alice is no longer its creator
    got = api.client.get("/api/v1" + item["download_path"], headers=bearer)
    assert got.status_code == 404


# --------------------------------------------------------------------------- S3 store


def test_org_store_on_s3(api: ApiClient, world: World, s3_endpoint: str, s3_bucket: str) -> None:
    create(api, world, world.alice, "moving")
    local_data, s3_data = unique(), unique(6 * 1024 * 1024)
    upload(api, world, world.alice, "moving", local_data)
    body = {
        "kind": "s3",
        "bucket": s3_bucket,
        "prefix": "cs",
        "endpoint_url": s3_endpoint,
        "region": S3_REGION,
        # The org's own key (moto takes any): never the server's.
        "access_key_id": "org-key-id",
        "secret_access_key": "org-secret-key",
    }
    assert api.put(f"/orgs/{world.slug}/datastore", world.alice, json=body).status_code == 403
    # moto listens on loopback: only an operator's allowlist lets an org store go there.
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    r = api.put(f"/orgs/{world.slug}/datastore", world.admin, json=body)
    assert r.status_code == 200, r.text
    shown = api.get(f"/orgs/{world.slug}/datastore", world.bob).json()
    assert shown["kind"] == "s3" and shown["config"]["bucket"] == s3_bucket
    assert shown["access_key_id"] == "org-key-id"
    assert "org-secret-key" not in r.text + str(shown) and "testing" not in str(shown)
    sha = hashlib.sha256(s3_data).hexdigest()
    assert upload(api, world, world.alice, "moving", s3_data).status_code == 201
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=S3_REGION)
    key = f"cs/{object_key(sha)}"
    assert s3.head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == len(s3_data)
    # Both versions read back: v1 from local disk, v2 from S3.
    assert download(api, world, world.bob, "moving", "1").content == local_data
    assert download(api, world, world.bob, "moving", "2").content == s3_data
    # A damaged S3 object is detected too.
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * len(s3_data))
    try:
        r = download(api, world, world.bob, "moving", "2")
        assert r.content != s3_data
    except Exception as exc:
        assert "checksum" in str(exc).lower()
    # Back to the default store; the S3 version stays readable where it is.
    s3.put_object(Bucket=s3_bucket, Key=key, Body=s3_data)
    r = api.put(f"/orgs/{world.slug}/datastore", world.admin, json={"kind": "default"})
    assert r.json()["kind"] == "default"
    assert download(api, world, world.bob, "moving", "2").content == s3_data


def test_bad_store_settings_are_refused(api: ApiClient, world: World) -> None:
    url = f"/orgs/{world.slug}/datastore"
    bad = [
        ({"kind": "s3"}, "bucket"),
        ({"kind": "s3", "bucket": "Not_A_Bucket"}, "bucket"),
        ({"kind": "s3", "bucket": "ok-bucket", "endpoint_url": "ftp://x"}, "endpoint_url"),
        ({"kind": "s3", "bucket": "ok-bucket", "prefix": "a/../b"}, "prefix"),
        ({"kind": "s3", "bucket": "ok-bucket", "secret_access_key": "x"}, "access_key_id"),
        ({"kind": "s3", "bucket": "ok-bucket", "whatever": "x"}, "whatever"),
        # Loopback is refused before anything is asked (tests/test_storage_safety.py).
        (
            {"kind": "s3", "bucket": "ok-bucket", "endpoint_url": "http://127.0.0.1:9"},
            "endpoint_url",
        ),
    ]
    for body, field in bad:
        r = api.put(url, world.admin, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["field"] == field, (body, r.json())
    # Allowed, but nothing listens there: the probe fails, nothing is saved.
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    body = {"kind": "s3", "bucket": "ok-bucket", "endpoint_url": "http://127.0.0.1:9"}
    r = api.put(url, world.admin, json=body)
    assert r.status_code == 422 and r.json()["field"] == "bucket", r.text
    assert api.get(url, world.admin).json()["kind"] == "default"


# --------------------------------------------------------------------------- cascades


def test_member_removal_and_org_deletion(
    api: ApiClient, world: World, s3_endpoint: str, s3_bucket: str
) -> None:
    create(api, world, world.alice, "listed", visibility="restricted", members=[world.bob.name])
    upload(api, world, world.alice, "listed", b"for bob")
    r = api.delete(f"/orgs/{world.slug}/members/{world.bob.id}", world.owner)
    assert r.status_code == 204, r.text
    shown = api.get(ds(world, "listed"), world.alice).json()
    assert shown["members"] == []  # a member who left is off the list
    # The organization goes with its datasets, versions, lineage rows and store settings.
    body = {
        "kind": "s3",
        "bucket": s3_bucket,
        "endpoint_url": s3_endpoint,
        "region": S3_REGION,
        "access_key_id": "org-key-id",
        "secret_access_key": "org-secret-key",
    }
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    assert api.put(f"/orgs/{world.slug}/datastore", world.owner, json=body).status_code == 200
    upload(api, world, world.alice, "listed", unique())
    make_job(api.db, world.slug, world.alice.id, inputs=["listed@1"])
    org_name = api.get(f"/orgs/{world.slug}", world.owner).json()["name"]
    r = api.request("DELETE", f"/orgs/{world.slug}", world.owner, json={"confirm": org_name})
    assert r.status_code == 204, r.text
    with api.db.session() as s:
        left = s.scalar(select(func.count()).select_from(Dataset).where(Dataset.name == "listed"))
        assert left == 0


# ------------------------------------------------------------------------ housekeeping


def test_housekeeping_purges_a_deleted_orgs_bytes_and_keeps_shared_ones(
    api: ApiClient, world: World
) -> None:
    # Bytes only the deleted org had, and bytes another org also holds (the default store
    # keeps one copy of identical content, whoever uploaded it).
    own, shared = unique(), unique()
    create(api, world, world.alice, "mine")
    assert upload(api, world, world.alice, "mine", own).status_code == 201
    assert upload(api, world, world.alice, "mine", shared).status_code == 201
    other_owner = api.signup()
    other = World(api.create_org(other_owner), other_owner, other_owner, other_owner, other_owner)
    create(api, other, other_owner, "theirs")
    assert upload(api, other, other_owner, "theirs", shared).status_code == 201

    org_name = api.get(f"/orgs/{world.slug}", world.owner).json()["name"]
    r = api.request("DELETE", f"/orgs/{world.slug}", world.owner, json={"confirm": org_name})
    assert r.status_code == 204, r.text
    own_path = store_path(hashlib.sha256(own).hexdigest())
    shared_path = store_path(hashlib.sha256(shared).hexdigest())
    assert own_path.exists()  # the deletion's transaction leaves the store alone

    collector = DatasetGarbageCollector(api.db, get_settings())
    assert collector.run_once() >= 1
    assert not own_path.exists()
    assert shared_path.exists()
    got = download(api, other, other_owner, "theirs")
    assert got.status_code == 200 and got.content == shared
    assert collector.run_once() == 0  # nothing left to do: a second pass is a no-op


def test_housekeeping_runs_on_its_interval(api: ApiClient, world: World) -> None:
    data = unique()
    create(api, world, world.alice, "gone")
    assert upload(api, world, world.alice, "gone", data).status_code == 201
    org_name = api.get(f"/orgs/{world.slug}", world.owner).json()["name"]
    api.request("DELETE", f"/orgs/{world.slug}", world.owner, json={"confirm": org_name})
    path = store_path(hashlib.sha256(data).hexdigest())
    assert path.exists()
    settings = get_settings().model_copy(update={"dataset_gc_interval_s": 0.2})
    collector = DatasetGarbageCollector(api.db, settings)
    collector.start()
    try:
        deadline = time.monotonic() + 20
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        collector.stop()
    assert not path.exists()
    off = DatasetGarbageCollector(
        api.db, get_settings().model_copy(update={"dataset_gc_interval_s": 0})
    )
    off.start()
    assert not off.health().enabled and not off.health().running  # 0 turns it off
