"""Webhook notifications against a real local HTTP receiver: signatures, retries with
backoff, a hanging receiver, URL validation (no internal targets), durability."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from orgs import notifications, security
from orgs.config import Settings, get_settings
from orgs.db import Database, utcnow
from orgs.models import Machine, Organization
from orgs.notifications import NotificationOutbox
from tests.support import ApiClient, Person

SECRET = "s3cret-signing-key-0123456789"


# ----------------------------------------------------------------------- the receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local webhook receiver: records requests, fails the first `fail_first` with 500,
    or sleeps `hang_s` before answering."""

    fail_first: int = 0
    hang_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.requests.append(Received(path, headers, body))
            n = len(self.requests)
        if self.hang_s:
            time.sleep(self.hang_s)
        return 500 if n <= self.fail_first else 200

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} requests, got {len(self.requests)}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = rec.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the client gave up (timeout): nothing to answer

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def verify(secret: str, received: Received, max_age_s: float = 300) -> None:
    """What a receiver does: recompute the HMAC over "<timestamp>." + body, compare in
    constant time, refuse old timestamps."""
    timestamp = received.headers["x-cshare-timestamp"]
    assert abs(time.time() - int(timestamp)) < max_age_s
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(received.headers["x-cshare-signature"], f"sha256={expected}")


# ------------------------------------------------------------------------ app helpers


def fast_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "notifications_allow_loopback": True,
        "notifications_backoff_s": 0.2,
        "notifications_backoff_max_s": 1.0,
        "notifications_read_timeout_s": 1.0,
        "notifications_connect_timeout_s": 1.0,
        "notifications_poll_s": 0.1,
        "notifications_max_attempts": 5,
        # Tests sweep for offline machines themselves.
        "notifications_offline_sweep_s": 3600.0,
    }
    values.update(overrides)
    return get_settings().model_copy(update=values)


@pytest.fixture
def app_factory(database: Database) -> Iterator[Any]:
    clients: list[TestClient] = []

    def start(**overrides: Any) -> ApiClient:
        app = create_app(fast_settings(**overrides), database)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return ApiClient(client, database)

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def org_with_admin(api: ApiClient) -> tuple[Person, str]:
    owner = api.signup()
    return owner, api.create_org(owner)


def set_targets(api: ApiClient, who: Person, slug: str, targets: list[dict[str, Any]]) -> Any:
    r = api.put(f"/orgs/{slug}/notifications", who, json={"targets": targets})
    assert r.status_code == 200, r.text
    return r.json()


def org_id(db: Database, slug: str) -> uuid.UUID:
    with db.session(write=False) as s:
        return s.scalars(select(Organization.id).where(Organization.slug == slug)).one()


def wait_delivery(db: Database, event: str, status: str = "delivered", timeout_s: float = 20):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.session(write=False) as s:
            rows = list(
                s.scalars(select(NotificationOutbox).where(NotificationOutbox.event == event))
            )
        if rows and all(r.status == status for r in rows):
            return rows
        time.sleep(0.05)
    raise AssertionError(f"{event}: {[(r.status, r.attempts, r.last_error) for r in rows]}")


# ---------------------------------------------------------------------------- tests


def test_signed_delivery_is_retried_with_backoff_until_it_succeeds(
    app_factory: Any, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    api = app_factory()
    owner, slug = org_with_admin(api)
    set_targets(api, owner, slug, [{"kind": "webhook", "url": receiver.url, "secret": SECRET}])

    newcomer = api.signup()
    started = time.monotonic()
    api.add_member(slug, owner, newcomer)
    assert time.monotonic() - started < 2, "the request must not wait for the delivery"

    got = receiver.wait_for(3)
    assert len({r.headers["x-cshare-delivery"] for r in got}) == 1, "one delivery, retried"
    for r in got:
        verify(SECRET, r)
        assert r.headers["x-cshare-event"] == "member.joined"
        assert r.path == "/hook"
    body = got[-1].json
    assert body["event"] == "member.joined"
    assert body["org"] == slug
    assert body["data"]["name"] == newcomer.name
    assert body["data"]["role"] == "member"
    # A tampered body fails verification (the check above is not vacuous).
    with pytest.raises(AssertionError):
        verify(SECRET, Received(got[-1].path, got[-1].headers, got[-1].body + b" "))

    [row] = wait_delivery(api.db, "member.joined")
    assert row.attempts == 3
    # Backoff: 0.2 s then 0.4 s nominal (+-20 % jitter) between the attempts.
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, gaps
    r = api.get(f"/orgs/{slug}/notifications/deliveries", owner)
    assert r.status_code == 200
    [item] = [i for i in r.json()["items"] if i["event"] == "member.joined"]
    assert item["status"] == "delivered" and item["attempts"] == 3


def test_backoff_grows_and_gives_up_after_max_attempts(
    app_factory: Any, receiver: Receiver
) -> None:
    receiver.fail_first = 100
    api = app_factory(notifications_max_attempts=3)
    owner, slug = org_with_admin(api)
    set_targets(api, owner, slug, [{"kind": "webhook", "url": receiver.url, "secret": SECRET}])
    r = api.post(f"/orgs/{slug}/notifications/test", owner)
    assert r.status_code == 202 and r.json() == {"queued": 1}
    [row] = wait_delivery(api.db, notifications.TEST_EVENT, status="failed")
    assert row.attempts == 3 and row.last_status == 500
    got = receiver.wait_for(3)
    assert len(got) == 3
    times = [int(r.headers["x-cshare-timestamp"]) for r in got]
    assert times == sorted(times)


def test_slack_target_gets_text_and_event_filters_apply(
    app_factory: Any, receiver: Receiver, database: Database
) -> None:
    api = app_factory()
    owner, slug = org_with_admin(api)
    set_targets(
        api, owner, slug, [{"kind": "slack", "url": receiver.url, "events": ["job.failed"]}]
    )
    oid = org_id(database, slug)
    with database.transaction() as s:
        # A member joining is not among the target's events: nothing is queued.
        assert notifications.emit(s, oid, "member.joined", {"name": "x"}) == 0
        assert (
            notifications.emit(
                s,
                oid,
                "job.failed",
                {"job_id": "j-1", "deployment": "train", "user": "ada", "reason": "exit 1"},
            )
            == 1
        )
    [got] = receiver.wait_for(1)
    assert got.json == {"text": f"[{slug}] Job j-1 (train) of ada failed: exit 1"}
    assert "x-cshare-signature" not in got.headers


def test_outbox_is_transactional_and_survives_a_restart(
    app_factory: Any, receiver: Receiver, database: Database
) -> None:
    # No delivery thread: the event is only stored, as if the process died after commit.
    api = app_factory(notifications_enabled=False)
    owner, slug = org_with_admin(api)
    set_targets(api, owner, slug, [{"kind": "webhook", "url": receiver.url, "secret": SECRET}])
    oid = org_id(database, slug)
    with database.session() as s:
        notifications.emit(s, oid, "job.crashed", {"job_id": "rolled-back"})
        s.rollback()  # the change did not happen: neither does its notification
    with database.transaction() as s:
        notifications.emit(s, oid, "job.crashed", {"job_id": "kept"})
    time.sleep(0.5)
    assert receiver.requests == []

    app_factory()  # a process with the delivery thread starts: the stored event goes out
    [got] = receiver.wait_for(1)
    verify(SECRET, got)
    assert got.json["data"] == {"job_id": "kept"}
    time.sleep(0.5)
    assert len(receiver.requests) == 1


def test_a_hanging_receiver_times_out_without_harming_the_api(
    app_factory: Any, receiver: Receiver
) -> None:
    receiver.hang_s = 5.0
    api = app_factory(notifications_read_timeout_s=0.5, notifications_max_attempts=2)
    owner, slug = org_with_admin(api)
    set_targets(api, owner, slug, [{"kind": "webhook", "url": receiver.url, "secret": SECRET}])
    started = time.monotonic()
    assert api.post(f"/orgs/{slug}/notifications/test", owner).status_code == 202
    receiver.wait_for(1)
    # While the delivery hangs, the API answers at once.
    t0 = time.monotonic()
    assert api.get(f"/orgs/{slug}", owner).status_code == 200
    assert time.monotonic() - t0 < 1.0
    [row] = wait_delivery(api.db, notifications.TEST_EVENT, status="failed", timeout_s=15)
    assert row.last_error == "timed out"
    assert time.monotonic() - started < 10, "each attempt is cut off by the read timeout"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0:8000/",
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://user:pw@example.com/hook",
        "http:///nohost",
        "http://no-such-host.invalid/hook",
    ],
)
def test_internal_or_bad_urls_are_refused(sqlite_database: Database, url: str) -> None:
    # Loopback is refused too here: the default setting.
    app = create_app(fast_settings(notifications_allow_loopback=False), sqlite_database)
    with TestClient(app) as client:
        api = ApiClient(client, sqlite_database)
        owner, slug = org_with_admin(api)
        r = api.put(
            f"/orgs/{slug}/notifications",
            owner,
            json={"targets": [{"kind": "webhook", "url": url, "secret": SECRET}]},
        )
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "targets.0.url"
        assert api.get(f"/orgs/{slug}/notifications", owner).json()["targets"] == []


def test_secrets_never_leave_and_a_round_trip_keeps_them(
    app_factory: Any, receiver: Receiver
) -> None:
    api = app_factory()
    owner, slug = org_with_admin(api)
    r = api.put(
        f"/orgs/{slug}/notifications",
        owner,
        json={"targets": [{"kind": "webhook", "url": receiver.url}]},
    )
    assert r.status_code == 422 and r.json()["field"] == "targets.0.secret"
    out = set_targets(
        api, owner, slug, [{"kind": "webhook", "url": receiver.url, "secret": SECRET}]
    )
    assert SECRET not in json.dumps(out)
    [target] = out["targets"]
    assert target["secret_set"] is True and target["events"] == []
    # Send back what GET returned (no secret): the stored secret stays and still signs.
    again = api.get(f"/orgs/{slug}/notifications", owner).json()
    back = [{k: t[k] for k in ("kind", "url", "events")} for t in again["targets"]]
    assert set_targets(api, owner, slug, back)["targets"][0]["id"] == target["id"]
    api.post(f"/orgs/{slug}/notifications/test", owner)
    verify(SECRET, receiver.wait_for(1)[0])
    # Audit: the change is recorded, the secret is not.
    audit = api.get(f"/orgs/{slug}/audit", owner, params={"action": "notifications.updated"})
    assert audit.status_code == 200 and audit.json()["items"]
    assert SECRET not in audit.text
    # Members may not see or change the targets.
    member = api.signup()
    api.add_member(slug, owner, member)
    assert api.get(f"/orgs/{slug}/notifications", member).status_code == 403


def test_member_left_machine_pending_and_machine_offline(
    app_factory: Any, receiver: Receiver, database: Database
) -> None:
    api = app_factory()
    owner, slug = org_with_admin(api)
    set_targets(
        api,
        owner,
        slug,
        [
            {
                "kind": "webhook",
                "url": receiver.url,
                "secret": SECRET,
                "events": ["member.left", "machine.pending_approval", "machine.offline"],
            }
        ],
    )
    member = api.signup()
    api.add_member(slug, owner, member)  # not subscribed: no delivery
    assert api.post(f"/orgs/{slug}/leave", member).status_code in (200, 204)
    first = receiver.wait_for(1)[0].json
    assert first["event"] == "member.left" and first["data"]["name"] == member.name

    oid = org_id(database, slug)
    long_ago = utcnow() - timedelta(minutes=5)
    with database.transaction() as s:
        s.add(
            Machine(
                org_id=oid,
                owner_id=uuid.UUID(owner.id),
                name="pending-box",
                machine_type="gpu",
                hardware={},
                slots=1,
                status="pending",
                token_hash=security.hash_token(security.new_token("machine")),
            )
        )
        s.add(
            Machine(
                org_id=oid,
                owner_id=uuid.UUID(owner.id),
                name="quiet-box",
                machine_type="cpu",
                hardware={},
                slots=2,
                status="approved",
                token_hash=security.hash_token(security.new_token("machine")),
                last_heartbeat_at=long_ago,
            )
        )
    got = receiver.wait_for(2)
    assert got[1].json["event"] == "machine.pending_approval"
    assert got[1].json["data"]["name"] == "pending-box"

    assert notifications.sweep_offline_machines(database) == 1
    assert notifications.sweep_offline_machines(database) == 0, "once per silence"
    got = receiver.wait_for(3)
    offline = got[2].json
    assert offline["event"] == "machine.offline" and offline["data"]["name"] == "quiet-box"
    # A new heartbeat followed by a new silence is announced again.
    with database.transaction() as s:
        box = s.scalars(select(Machine).where(Machine.name == "quiet-box")).one()
        box.last_heartbeat_at = utcnow() - timedelta(minutes=2)
    assert notifications.sweep_offline_machines(database) == 1


def test_unknown_event_names_are_refused(sqlite_database: Database) -> None:
    with sqlite_database.session() as s, pytest.raises(ValueError):
        notifications.emit(s, uuid.uuid4(), "job.exploded", {})
