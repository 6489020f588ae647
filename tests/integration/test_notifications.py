"""Notifications against real local receivers (an HTTP server, an aiosmtpd SMTP server):
signed webhooks, Slack and Discord through apprise, e-mail, retries with backoff, a
hanging receiver, URL validation (no internal targets) at save and at delivery,
durability, and members' own job e-mails."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from apprise.plugins.discord import NotifyDiscord
from apprise.plugins.slack import NotifySlack
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from orgs import notifications, security
from orgs.config import Settings, get_settings
from orgs.db import Database, utcnow
from orgs.models import Machine, Organization
from orgs.notifications import NotificationOutbox
from policies.errors import Invalid
from tests.http_receiver import Received, Receiver, verify
from tests.smtp_server import SENDER, SmtpServer
from tests.support import ApiClient, Person

SECRET = "s3cret-signing-key-0123456789"


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


SLACK_URL = "https://hooks.slack.com/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX"
DISCORD_URL = "https://discord.com/api/webhooks/123456789/abcdefTOKEN-_x"
TEAMS_URL = (
    "https://prod-161.westeurope.logic.azure.com:443/workflows/643e69f83c8944438d68119179a10a64"
    "/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun"
    "&sv=1.0&sig=KODuebWbDGYFr0z0eu-6Rj8aUKz7108W3wrNJZxFE5A"
)


@pytest.fixture
def chat_services_on(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Receiver:
    """apprise's Slack and Discord plugins post to hosts of their own (hooks.slack.com,
    discord.com); point those bases at the local receiver so the real plugins deliver
    over real sockets. Everything of ours (and of apprise) still runs, the SSRF check
    included: it is made on the host the plugin will connect to."""
    monkeypatch.setattr(NotifySlack, "webhook_url", receiver.base + "/services")
    monkeypatch.setattr(NotifyDiscord, "notify_url", receiver.base + "/api/webhooks")
    return receiver


def test_slack_and_discord_are_sent_by_apprise_and_event_filters_apply(
    app_factory: Any, chat_services_on: Receiver, database: Database
) -> None:
    receiver = chat_services_on
    api = app_factory()
    owner, slug = org_with_admin(api)
    set_targets(
        api,
        owner,
        slug,
        [
            {"kind": "slack", "url": SLACK_URL, "events": ["job.failed"]},
            {"kind": "discord", "url": DISCORD_URL, "events": ["job.failed"]},
        ],
    )
    oid = org_id(database, slug)
    with database.transaction() as s:
        # A member joining is not among the targets' events: nothing is queued.
        assert notifications.emit(s, oid, "member.joined", {"name": "x"}) == 0
        queued = notifications.emit(
            s,
            oid,
            "job.failed",
            {"job_id": "j-1", "deployment": "train", "user": "ada", "reason": "exit 1"},
        )
        assert queued == 2
    got = {r.path: r for r in receiver.wait_for(2)}
    text = f"[{slug}] Job j-1 (train) of ada failed: exit 1"
    slack = got["/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX"]
    assert [a["text"] for a in slack.json["attachments"]] == [text]
    assert slack.json["attachments"][0]["color"] != "#3AA3E3", "a failure is not info-blue"
    discord = got["/api/webhooks/123456789/abcdefTOKEN-_x"]
    assert discord.json["content"] == text
    assert "x-cshare-signature" not in slack.headers
    wait_delivery(api.db, "job.failed")


def test_chat_urls_become_apprise_plugins_for_that_service_only() -> None:
    """Slack, Discord and Teams cannot be delivered to a local receiver (apprise fixes
    their hosts, and Teams only speaks https to a Microsoft host): their URL handling is
    checked here, without the network."""
    from orgs.notifications import channels

    slack = channels.chat_plugin("slack", SLACK_URL, field="url")
    assert isinstance(slack, NotifySlack)
    assert channels.endpoint(slack) == "https://hooks.slack.com/"
    discord = channels.chat_plugin("discord", DISCORD_URL, field="url")
    assert isinstance(discord, NotifyDiscord)
    assert channels.endpoint(discord) == "https://discord.com/"
    teams = channels.chat_plugin("msteams", TEAMS_URL, field="url")
    assert channels.endpoint(teams) == "https://prod-161.westeurope.logic.azure.com:443/"
    refused = [
        ("slack", "https://hooks.example.com/services/T0001/B0002/XXXX"),  # not Slack's host
        ("slack", SLACK_URL.replace("https", "http")),
        ("slack", DISCORD_URL),
        ("discord", SLACK_URL),
        ("discord", "https://discord.com.evil.example/api/webhooks/1/x"),
        ("msteams", TEAMS_URL.replace("prod-161.westeurope.logic.azure.com:443", "10.0.0.5")),
        ("msteams", TEAMS_URL.replace("logic.azure.com", "logic.azure.com.evil.example")),
        ("msteams", "https://prod-1.westeurope.logic.azure.com/not/a/workflow"),
    ]
    for kind, url in refused:
        with pytest.raises(Invalid) as err:
            channels.chat_plugin(kind, url, field="targets.0.url")
        assert err.value.field == "targets.0.url", (kind, url)


def test_chat_target_refused_when_its_host_resolves_inside(
    sqlite_database: Database, chat_services_on: Receiver
) -> None:
    # The host apprise would connect to is loopback here: refused like any internal one.
    app = create_app(fast_settings(notifications_allow_loopback=False), sqlite_database)
    with TestClient(app) as client:
        api = ApiClient(client, sqlite_database)
        owner, slug = org_with_admin(api)
        r = api.put(
            f"/orgs/{slug}/notifications",
            owner,
            json={"targets": [{"kind": "slack", "url": SLACK_URL}]},
        )
        assert r.status_code == 422, r.text
        assert "127.0.0.1" in r.json()["detail"] and r.json()["field"] == "targets.0.url"


def test_addresses_are_checked_again_at_delivery(
    app_factory: Any, chat_services_on: Receiver, database: Database
) -> None:
    """A target saved while its host was acceptable is not sent to once it is not
    (a DNS change, or here: loopback no longer allowed)."""
    receiver = chat_services_on
    saving = app_factory(notifications_enabled=False)
    owner, slug = org_with_admin(saving)
    set_targets(
        saving,
        owner,
        slug,
        [
            {"kind": "webhook", "url": receiver.url, "secret": SECRET},
            {"kind": "slack", "url": SLACK_URL},
        ],
    )
    saving.post(f"/orgs/{slug}/notifications/test", owner)
    api = app_factory(notifications_allow_loopback=False, notifications_max_attempts=1)
    rows = wait_delivery(api.db, notifications.TEST_EVENT, status="failed")
    assert len(rows) == 2
    for row in rows:
        assert "127.0.0.1" in row.last_error and "public addresses" in row.last_error
    time.sleep(0.3)
    assert receiver.requests == []


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


# ------------------------------------------------------------------------------ e-mail


def test_email_target_is_sent_through_smtp_and_retried(
    app_factory: Any, smtp_server: SmtpServer, database: Database
) -> None:
    smtp_server.fail_first = 1  # 451: try again later
    api = app_factory(**smtp_server.settings())
    owner, slug = org_with_admin(api)
    out = set_targets(api, owner, slug, [{"kind": "email", "url": "ops@example.org", "events": []}])
    assert out["targets"][0]["url"] == "mailto:ops@example.org"
    newcomer = api.signup()
    api.add_member(slug, owner, newcomer)
    [mail] = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["ops@example.org"]
    assert mail.mail_from == SENDER
    assert mail.subject == f"[{slug}] {newcomer.name} joined as member."
    assert f"{newcomer.name} joined as member." in mail.text
    [row] = wait_delivery(api.db, "member.joined")
    assert row.attempts == 2, "the 451 was retried"


def test_email_targets_need_smtp_settings(sqlite_database: Database) -> None:
    app = create_app(fast_settings(smtp_host=None), sqlite_database)
    with TestClient(app) as client:
        api = ApiClient(client, sqlite_database)
        owner, slug = org_with_admin(api)
        r = api.put(
            f"/orgs/{slug}/notifications",
            owner,
            json={"targets": [{"kind": "email", "url": "mailto:ops@example.org"}]},
        )
        assert r.status_code == 422 and r.json()["field"] == "targets.0.url"
        assert "CSHARE_SMTP_HOST" in r.json()["detail"]


def job_payload(user_id: str, state: str, reason: str = "") -> dict[str, Any]:
    """What the job ledger emits when a job ends."""
    return {
        "job_id": str(uuid.uuid4()),
        "user_id": user_id,
        "state": state,
        "reason": reason,
        "machine_type": "gpu",
        "deployment": "train",
        "org": "",
    }


def test_members_get_their_own_job_emails_as_they_chose(
    app_factory: Any, smtp_env: SmtpServer, database: Database
) -> None:
    api = app_factory()
    owner, slug = org_with_admin(api)
    ada = api.signup()
    api.add_member(slug, owner, ada)
    oid = org_id(database, slug)

    def job_ends(event: str, state: str, reason: str = "") -> tuple[int, dict[str, Any]]:
        payload = job_payload(ada.id, state, reason)
        payload["org"] = slug
        with database.transaction() as s:
            return notifications.emit(s, oid, event, payload), payload

    mine = api.get("/me/notifications", ada)
    assert mine.status_code == 200
    assert mine.json() == {"job_email": "failures", "email": ada.email, "email_available": True}

    # Default "failures": a completed job sends nothing, a failed one a mail.
    assert job_ends("job.completed", "completed")[0] == 0
    queued, failed = job_ends("job.failed", "failed", "exit code 3")
    assert queued == 1
    [mail] = smtp_env.wait_for(1)
    assert mail.rcpt_tos == [ada.email]
    assert (
        mail.subject == f"[{slug}] Job {failed['job_id']} (train) of {ada.name} failed: exit code 3"
    )
    assert "Machine type: gpu" in mail.text
    assert f"/orgs/{slug}/jobs/{failed['job_id']}" in mail.text

    r = api.put("/me/notifications", ada, json={"job_email": "all"})
    assert r.status_code == 200 and r.json()["job_email"] == "all"
    assert job_ends("job.cancelled", "cancelled")[0] == 1
    assert job_ends("job.completed", "completed")[0] == 1
    mails = smtp_env.wait_for(3)
    # Sent in parallel: in either order.
    assert sorted(m.subject.rsplit(" ", 1)[-1] for m in mails[1:]) == ["cancelled.", "completed."]

    assert api.put("/me/notifications", ada, json={"job_email": "off"}).status_code == 200
    assert job_ends("job.crashed", "crashed", "lost the machine")[0] == 0
    # The org's own deliveries list does not show members' personal mails.
    r = api.get(f"/orgs/{slug}/notifications/deliveries", owner)
    assert r.status_code == 200 and r.json()["items"] == []

    bad = api.put("/me/notifications", ada, json={"job_email": "sometimes"})
    assert bad.status_code == 422 and {"error", "detail"} <= set(bad.json())
    # Another member's choice is theirs alone.
    assert api.get("/me/notifications", owner).json()["job_email"] == "failures"
    time.sleep(0.3)
    assert len(smtp_env.mails) == 3


def test_no_personal_mail_without_smtp(sqlite_database: Database) -> None:
    with ApiClient.start(sqlite_database) as api:
        owner, slug = org_with_admin(api)
        assert api.get("/me/notifications", owner).json()["email_available"] is False
        with sqlite_database.transaction() as s:
            queued = notifications.emit(
                s, org_id(sqlite_database, slug), "job.failed", job_payload(owner.id, "failed")
            )
        assert queued == 0
