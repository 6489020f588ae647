"""Storage safety through the API, against real sockets, moto's S3 server and real disks.

Each attack passes only when it fails:

- SSRF through an org's S3 endpoint: loopback (a listener this test starts) and the
  metadata address 169.254.169.254 are refused when the store is saved, and again on
  every connection: after the operator narrowed the allowlist, and for a host name
  (`localhost`) that resolves to loopback now whatever it resolved to when saved. The
  listener's accept count proves nothing reached it; a control run proves it would see
  a connection.
- An org store never signs with the API server's AWS credentials (set in the server's
  environment here), and errors never echo the org's own secrets.
- The storage quota answers 413 before any byte is stored; temp files never outlive a
  failed upload; archives are capped and refuse links and devices; names with
  bidirectional controls are refused with 422 naming the field.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from datasets import wire
from datasets.models import DataStore
from datasets.storage import object_key
from flows.dispatch.housekeeping import DatasetGarbageCollector
from orgs.config import get_settings
from orgs.models import Organization
from tests.s3_server import S3_REGION
from tests.support import ApiClient, Person, serve_in_thread

SERVER_KEY = "AKIASERVERKEY0000001"
SERVER_SECRET = "server-secret-access-key-0001"
SERVER_TOKEN = "server-session-token-0001"
ORG_KEY = "ORGKEY0000000001"
ORG_SECRET = "org-secret-access-key-0001"
ORG_TOKEN = "org-session-token-0001"


@dataclass
class World:
    slug: str
    owner: Person
    admin: Person
    alice: Person


@pytest.fixture
def world(api: ApiClient) -> World:
    owner, admin, alice = (api.signup() for _ in range(3))
    slug = api.create_org(owner)
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, alice)
    return World(slug, owner, admin, alice)


class Listener:
    """A TCP server on 127.0.0.1 standing in for an internal service. It counts the
    connections it accepts and keeps each request's head. It answers like S3 would to a
    stranger: 200 to HEAD of the bucket, 404 to HEAD of objects, 403 to anything else
    with a message echoing the security token it was sent (an endpoint may say anything
    back)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.accepts = 0
        self.heads: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepts += 1
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
        except OSError:
            return
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        self.heads.append(head)
        if head.startswith("HEAD "):
            # The bucket exists; its objects do not (so a probe goes on to write one).
            path = head.split(" ", 2)[1]
            status = b"200 OK" if path.strip("/").count("/") == 0 else b"404 Not Found"
            conn.sendall(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        token = re.search(r"(?im)^x-amz-security-token:\s*(\S+)", head)
        echoed = token.group(1) if token else "none"
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
            f"<Message>Access denied for token {echoed}</Message></Error>"
        ).encode()
        conn.sendall(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


def store_url(world: World) -> str:
    return f"/orgs/{world.slug}/datastore"


def create(api: ApiClient, world: World, name: str) -> None:
    r = api.post(f"/orgs/{world.slug}/datasets", world.alice, json={"name": name})
    assert r.status_code == 201, r.text


def upload(api: ApiClient, world: World, name: str, data: Any, **kw: Any) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream", **kw.pop("headers", {})}
    return api.post(
        f"/orgs/{world.slug}/datasets/{name}/versions",
        world.alice,
        content=data,
        headers=headers,
        **kw,
    )


def versions(api: ApiClient, world: World, name: str) -> list[Any]:
    shown: list[Any] = api.get(f"/orgs/{world.slug}/datasets/{name}", world.alice).json()[
        "versions"
    ]
    return shown


def temp_files() -> list[Path]:
    tmp = get_settings().resolved_dataset_dir() / "tmp"
    return sorted(tmp.glob("*")) if tmp.exists() else []


def local_object(sha: str) -> Path:
    return get_settings().resolved_dataset_dir() / object_key(sha)


def saved_store(api: ApiClient, world: World, endpoint: str) -> None:
    """A store row as if saved when its endpoint was acceptable (allowlisted then, or its
    name resolving to a public address then): what the guard must still stop now."""
    with api.db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == world.slug)).one()
        s.add(
            DataStore(
                org_id=org.id,
                kind="s3",
                config={"bucket": "internal-bucket", "endpoint_url": endpoint},
                active=True,
            )
        )


# --------------------------------------------------------------------------- SSRF


def test_internal_endpoints_are_refused_when_saved(
    api: ApiClient, world: World, listener: Listener
) -> None:
    port = listener.port
    endpoints = [
        f"http://127.0.0.1:{port}",
        f"https://127.0.0.1:{port}",
        f"https://localhost:{port}",
        f"https://[::ffff:127.0.0.1]:{port}",
        "http://169.254.169.254",
        "https://169.254.169.254",
        "https://[::ffff:169.254.169.254]",
        "https://[fe80::1]",
        "https://10.1.2.3",
        "https://192.168.0.10",
        "https://0.0.0.0",
        "https://224.0.0.1",
    ]
    for endpoint in endpoints:
        body = {"kind": "s3", "bucket": "internal-bucket", "endpoint_url": endpoint}
        r = api.put(store_url(world), world.admin, json=body)
        assert r.status_code == 422, (endpoint, r.text)
        assert r.json()["field"] == "endpoint_url", r.json()
        assert r.json()["error"] == "store_endpoint_refused", r.json()
    assert listener.accepts == 0
    assert api.get(store_url(world), world.admin).json()["kind"] == "default"
    # A public name over plain http:// needs the operator too.
    plain = {"kind": "s3", "bucket": "b-1", "endpoint_url": "http://8.8.8.8", "verify": False}
    r = api.put(store_url(world), world.admin, json=plain)
    assert r.status_code == 422 and "http://" in r.json()["detail"], r.text


def test_every_connection_is_checked_after_the_allowlist_narrows(
    api: ApiClient, world: World, listener: Listener
) -> None:
    create(api, world, "probe")
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    body = {
        "kind": "s3",
        "bucket": "internal-bucket",
        "endpoint_url": f"http://127.0.0.1:{listener.port}",
        "verify": False,
    }
    assert api.put(store_url(world), world.admin, json=body).status_code == 200
    # Control: while allowed, an upload does reach the listener (and fails there).
    r = upload(api, world, "probe", b"control")
    assert r.status_code == 503, r.text
    reached = listener.accepts
    assert reached >= 1
    # The operator narrows the allowlist: the saved store reaches nothing any more.
    api.set_settings(store_endpoint_allowlist="")
    r = upload(api, world, "probe", os.urandom(1000))
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "store_endpoint_refused"
    assert "127.0.0.1" in r.json()["detail"]
    r = api.get(f"/orgs/{world.slug}/datasets/probe/versions/latest/download", world.alice)
    assert r.status_code == 404
    assert listener.accepts == reached
    assert versions(api, world, "probe") == []


def test_a_name_resolving_to_loopback_now_reaches_nothing(
    api: ApiClient, world: World, listener: Listener
) -> None:
    """DNS rebinding: whatever `localhost` resolved to when the store was saved, the
    connection is checked against what it resolves to now, and goes only there."""
    create(api, world, "rebind")
    saved_store(api, world, f"https://localhost:{listener.port}")
    r = upload(api, world, "rebind", os.urandom(1000))
    assert r.status_code == 403 and r.json()["error"] == "store_endpoint_refused", r.text
    assert listener.accepts == 0
    assert versions(api, world, "rebind") == []


def test_the_metadata_address_is_refused_on_connection(api: ApiClient, world: World) -> None:
    create(api, world, "meta")
    saved_store(api, world, "http://169.254.169.254")
    started = time.monotonic()
    r = upload(api, world, "meta", os.urandom(1000))
    assert r.status_code == 403 and r.json()["error"] == "store_endpoint_refused", r.text
    assert "169.254.169.254" in r.json()["detail"]
    # Refused before any connection attempt (which would wait for a connect timeout).
    assert time.monotonic() - started < 3


def test_allowlisted_loopback_store_works(
    api: ApiClient, world: World, s3_endpoint: str, s3_bucket: str
) -> None:
    create(api, world, "moto")
    body = {
        "kind": "s3",
        "bucket": s3_bucket,
        "endpoint_url": s3_endpoint,
        "region": S3_REGION,
        "access_key_id": ORG_KEY,
        "secret_access_key": ORG_SECRET,
    }
    assert api.put(store_url(world), world.admin, json=body).status_code == 422
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    r = api.put(store_url(world), world.admin, json=body)
    assert r.status_code == 200, r.text
    data = os.urandom(5000)
    assert upload(api, world, "moto", data).status_code == 201
    r = api.get(f"/orgs/{world.slug}/datasets/moto/versions/latest/download", world.alice)
    assert r.content == data
    key = object_key(hashlib.sha256(data).hexdigest())
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=S3_REGION)
    assert s3.head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == len(data)


# --------------------------------------------------------------------------- credentials


def test_org_stores_never_use_the_servers_credentials(
    api: ApiClient, world: World, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API server's own AWS identity, as an operator's environment would give it.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SERVER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SERVER_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SERVER_TOKEN)
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    endpoint = f"http://127.0.0.1:{listener.port}"
    base = {"kind": "s3", "bucket": "org-bucket", "endpoint_url": endpoint}

    # No key given: requests go unsigned, never with the server's identity.
    r = api.put(store_url(world), world.admin, json=base)
    assert r.status_code == 422 and r.json()["field"] == "bucket", r.text
    assert listener.heads
    unsigned = "\n".join(listener.heads)
    assert SERVER_KEY not in unsigned and SERVER_TOKEN not in unsigned
    assert "authorization:" not in unsigned.lower()

    # The org's own key signs; the endpoint echoes its token back, the answer does not.
    listener.heads.clear()
    keys = {
        "access_key_id": ORG_KEY,
        "secret_access_key": ORG_SECRET,
        "session_token": ORG_TOKEN,
    }
    r = api.put(store_url(world), world.admin, json={**base, **keys})
    assert r.status_code == 422, r.text
    signed = "\n".join(listener.heads)
    assert f"Credential={ORG_KEY}/" in signed and SERVER_KEY not in signed
    assert "[redacted]" in r.json()["detail"]
    for secret in (ORG_SECRET, ORG_TOKEN, SERVER_SECRET, SERVER_TOKEN):
        assert secret not in r.text

    # A profile of the server is refused; the operator's switch allows both.
    r = api.put(store_url(world), world.admin, json={**base, "profile": "default"})
    assert r.status_code == 422 and r.json()["field"] == "profile", r.text
    assert r.json()["error"] == "store_credentials_refused"
    api.set_settings(store_allow_server_credentials=True)
    listener.heads.clear()
    r = api.put(store_url(world), world.admin, json=base)
    assert r.status_code == 422, r.text
    assert f"Credential={SERVER_KEY}/" in "\n".join(listener.heads)  # the control

    # Saved with a key (no probe): shown without its secret, audited without it.
    api.set_settings(store_allow_server_credentials=False)
    r = api.put(store_url(world), world.admin, json={**base, **keys, "verify": False})
    assert r.status_code == 200, r.text
    shown = api.get(store_url(world), world.alice)
    assert shown.json()["access_key_id"] == ORG_KEY
    audit = api.get(f"/orgs/{world.slug}/audit", world.owner)
    for text in (r.text, shown.text, audit.text):
        assert ORG_SECRET not in text and ORG_TOKEN not in text
    # At rest: sealed with the server's secrets key, not readable in the database.
    with api.db.session(write=False) as s:
        raw = [str(c) for c in s.scalars(select(DataStore.credentials)) if c]
    assert raw and all(ORG_SECRET not in c and ORG_KEY not in c for c in raw), raw


# --------------------------------------------------------------------------- quota


def set_quota(api: ApiClient, world: World, max_bytes: int | None) -> None:
    r = api.put(
        f"/orgs/{world.slug}/settings", world.admin, json={"storage": {"max_bytes": max_bytes}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["storage"] == {"max_bytes": max_bytes}


def test_quota_settings_are_validated(api: ApiClient, world: World) -> None:
    url = f"/orgs/{world.slug}/settings"
    for bad in (-1, "12", 1.5, True):
        r = api.put(url, world.admin, json={"storage": {"max_bytes": bad}})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["field"].startswith("storage"), r.json()
    r = api.put(url, world.admin, json={"storage": {"max_gb": 1}})
    assert r.status_code == 422
    assert api.put(url, world.alice, json={"storage": {"max_bytes": 1}}).status_code == 403
    set_quota(api, world, 10)
    set_quota(api, world, None)


def test_quota_refuses_before_bytes_are_stored(api: ApiClient, world: World) -> None:
    create(api, world, "quota")
    set_quota(api, world, 10_000)
    first = os.urandom(6000)
    assert upload(api, world, "quota", first).status_code == 201
    usage = api.get(f"/orgs/{world.slug}/usage", world.admin).json()
    storage = usage["storage"]
    assert (storage["used_bytes"], storage["max_bytes"]) == (6000, 10_000)
    assert (storage["datasets_bytes"], storage["bundles_bytes"]) == (6000, 0)

    second = os.urandom(6000)
    sha = hashlib.sha256(second).hexdigest()
    r = upload(api, world, "quota", second)  # Content-Length announced
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "storage_quota_exceeded"
    assert "used 6000 of 10000" in body["detail"]
    assert (body["used_bytes"], body["limit_bytes"]) == (6000, 10_000)

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield second[:3000]
        yield second[3000:]

    r = upload(api, world, "quota", chunked())
    assert r.status_code == 413 and r.json()["error"] == "storage_quota_exceeded", r.text
    assert not local_object(sha).exists()
    assert temp_files() == []
    assert len(versions(api, world, "quota")) == 1

    # A directory: each file is checked by its tar header before it is stored.
    big = os.urandom(5000)
    r = api.post(
        f"/orgs/{world.slug}/datasets/quota/versions",
        world.alice,
        content=tar_of({"small.txt": b"ok", "big.bin": big}),
        headers={"Content-Type": "application/x-tar"},
    )
    assert r.status_code == 413 and r.json()["error"] == "storage_quota_exceeded", r.text
    assert not local_object(hashlib.sha256(big).hexdigest()).exists()
    assert temp_files() == []
    # Within the quota, uploads go on; deleting frees the space.
    assert upload(api, world, "quota", os.urandom(4000)).status_code == 201
    assert (
        api.get(f"/orgs/{world.slug}/usage", world.admin).json()["storage"]["used_bytes"] == 10_000
    )


def test_quota_answers_before_the_body_is_sent(database: Any) -> None:
    """Over a real socket: the 413 arrives although not one byte of the body was sent."""
    app = create_app(get_settings(), database)
    with serve_in_thread(app) as url, ApiClient.start(database) as api:
        owner = api.signup()
        slug = api.create_org(owner)
        world = World(slug, owner, owner, owner)
        create(api, world, "early")
        set_quota(api, world, 1000)
        host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (
                f"POST /api/v1/orgs/{slug}/datasets/early/versions HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {owner.token}\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 5000000\r\n\r\n"
            )
            sock.sendall(head.encode())
            answer = sock.recv(65536).decode("latin-1")
        assert answer.startswith("HTTP/1.1 413"), answer[:300]
        assert "storage_quota_exceeded" in answer
        assert temp_files() == []


# --------------------------------------------------------------------------- temp files


def test_failed_uploads_leave_no_temp_file(api: ApiClient, world: World) -> None:
    create(api, world, "temp")
    data = os.urandom(300_000)
    wrong = hashlib.sha256(b"other").hexdigest()
    r = upload(api, world, "temp", data, headers={"X-Content-SHA256": wrong})
    assert r.status_code == 422 and r.json()["error"] == "checksum_mismatch"
    assert temp_files() == []

    def dies() -> Iterator[bytes]:
        yield os.urandom(300_000)
        raise ConnectionResetError("the client died")

    try:
        r = upload(api, world, "temp", dies())
        assert r.status_code in (400, 422), r.text
    except ConnectionResetError:
        pass  # the test client may pass the error back instead of an answer
    assert temp_files() == []
    assert versions(api, world, "temp") == []


def test_housekeeping_removes_what_a_killed_process_left(api: ApiClient) -> None:
    tmp = get_settings().resolved_dataset_dir() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    abandoned, live = tmp / "upload-abandoned", tmp / "upload-live"
    abandoned.write_bytes(b"half an upload")
    live.write_bytes(b"being written")
    old = time.time() - 7 * 3600
    os.utime(abandoned, (old, old))
    try:
        DatasetGarbageCollector(api.db, get_settings()).run_once()
        assert not abandoned.exists()
        assert live.exists()  # written to recently: an upload in progress
    finally:
        live.unlink(missing_ok=True)


def test_interrupted_s3_upload_leaves_no_parts_or_temp_objects(
    api: ApiClient, world: World, s3_endpoint: str, s3_bucket: str
) -> None:
    create(api, world, "s3temp")
    api.set_settings(store_endpoint_allowlist="127.0.0.1/32")
    body = {
        "kind": "s3",
        "bucket": s3_bucket,
        "endpoint_url": s3_endpoint,
        "region": S3_REGION,
        "access_key_id": ORG_KEY,
        "secret_access_key": ORG_SECRET,
    }
    assert api.put(store_url(world), world.admin, json=body).status_code == 200
    part = get_settings().dataset_s3_part_bytes

    def dies() -> Iterator[bytes]:
        yield os.urandom(part + 1024)  # past one part: a multipart upload has begun
        raise ConnectionResetError("the client died")

    try:
        r = upload(api, world, "s3temp", dies())
        assert r.status_code in (400, 422), r.text
    except ConnectionResetError:
        pass
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=S3_REGION)
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    listed = s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [o["Key"] for o in listed if "/tmp/" in f"/{o['Key']}"] == []
    assert versions(api, world, "s3temp") == []


# --------------------------------------------------------------------------- archives


def tar_of(files: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def post_tar(api: ApiClient, world: World, name: str, body: bytes) -> httpx.Response:
    return api.post(
        f"/orgs/{world.slug}/datasets/{name}/versions",
        world.alice,
        content=body,
        headers={"Content-Type": "application/x-tar"},
    )


@pytest.mark.parametrize(
    "member",
    [
        special("hard", tarfile.LNKTYPE, "ok.txt"),
        special("soft", tarfile.SYMTYPE, "../../etc/passwd"),
        special("dev", tarfile.CHRTYPE),
        special("blk", tarfile.BLKTYPE),
        special("fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda m: m.name,
)
def test_links_and_devices_are_refused(
    api: ApiClient, world: World, member: tarfile.TarInfo
) -> None:
    create(api, world, "links")
    r = post_tar(api, world, "links", tar_of({"ok.txt": b"fine"}, extra=[member]))
    assert r.status_code == 422 and r.json()["field"] == "body", r.text
    assert versions(api, world, "links") == []


def test_archive_caps(api: ApiClient, world: World) -> None:
    create(api, world, "caps")
    api.set_settings(archive_max_files=3, archive_max_bytes=10_000)
    r = post_tar(api, world, "caps", tar_of({f"f{i}": b"x" for i in range(4)}))
    assert r.status_code == 422 and "more than 3 files" in r.json()["detail"], r.text
    big = os.urandom(6000)
    r = post_tar(api, world, "caps", tar_of({"a": os.urandom(6000), "b": big}))
    assert r.status_code == 422 and "more than 10000 bytes" in r.json()["detail"], r.text
    assert not local_object(hashlib.sha256(big).hexdigest()).exists()  # never stored
    assert versions(api, world, "caps") == []
    r = post_tar(api, world, "caps", tar_of({"a": b"1", "b": b"2", "c": b"3"}))
    assert r.status_code == 201, r.text


def test_clients_unpack_within_caps(tmp_path: Path) -> None:
    """The agent's and the CLI's unpacking (datasets.wire) has the same caps."""
    for kwargs, files, refused in (
        ({"max_files": 2}, {"a": b"1", "b": b"2", "c": b"3"}, "c"),
        ({"max_bytes": 10}, {"a": b"123456", "b": b"123456"}, "b"),
    ):
        dest = tmp_path / uuid.uuid4().hex
        dest.mkdir()
        with pytest.raises(wire.UnsafeArchive):
            wire.extract_tar(io.BytesIO(tar_of(files)), dest, **kwargs)
        assert not (dest / refused).exists()  # refused before a byte of it is written
    dest = tmp_path / "links"
    dest.mkdir()
    body = tar_of({"ok": b"x"}, extra=[special("l", tarfile.SYMTYPE, "/etc/passwd")])
    with pytest.raises(wire.UnsafeArchive):
        wire.extract_tar(io.BytesIO(body), dest)
    assert not (dest / "l").exists()


# --------------------------------------------------------------------------- names


BIDI = ["\u202e", "\u202a", "\u202d", "\u2066", "\u2069", "\u200f", "\u200e"]


@pytest.mark.parametrize("mark", BIDI, ids=lambda c: f"U+{ord(c):04X}")
def test_names_with_bidi_controls_are_refused(api: ApiClient, world: World, mark: str) -> None:
    def refused(r: httpx.Response, field: str) -> None:
        assert r.status_code == 422, r.text
        assert (r.json()["error"], r.json()["field"]) == ("bidi_control", field), r.json()

    refused(
        api.post(f"/orgs/{world.slug}/datasets", world.alice, json={"name": f"a{mark}b"}), "name"
    )
    create(api, world, "named")
    r = upload(api, world, "named", b"x", params={"filename": f"invoice{mark}fdp.exe"})
    refused(r, "filename")
    refused(post_tar(api, world, "named", tar_of({f"dir/evil{mark}txt.sh": b"x"})), "body")
    refused(api.post("/orgs", world.owner, json={"name": f"Acme{mark} Corp"}), "name")
    r = api.patch(f"/orgs/{world.slug}", world.owner, json={"name": f"Acme{mark}"})
    refused(r, "name")
    body = {"name": f"gpu{mark}box", "machine_type": "cpu"}
    refused(api.post(f"/orgs/{world.slug}/machines", world.alice, json=body), "name")
    body = {"name": f"train{mark}", "entrypoint": "flows/train.py:train"}
    refused(api.post(f"/orgs/{world.slug}/deployments", world.admin, json=body), "name")
    email = f"{uuid.uuid4().hex[:8]}@example.test"
    body = {"email": email, "name": f"bob{mark}", "password": "pw-long-enough-1"}
    refused(api.post("/auth/signup", json=body), "name")
    assert versions(api, world, "named") == []
