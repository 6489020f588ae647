"""TOTP two-factor: enrolment, sign-in with a code, recovery codes, replayed and wrong
codes, disabling, tokens needing a recent second factor, and an organization's
`security.require_2fa` (members without it are turned away; machines and running jobs
are not). Both databases (the `api` fixture); codes computed with pyotp as an app would.

A code is accepted once per 30-second step, so tests that need several codes move the
server's two-factor clock forward a step at a time (`Clock`) instead of sleeping.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pyotp
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, update

from api.web import csrf
from orgs import secret_box, two_factor
from orgs.config import get_settings
from orgs.db import utcnow
from orgs.models import ApiToken, AuditEvent
from tests.integration.test_datasets import as_job, job_token, make_job
from tests.support import PREFIX, ApiClient, Person, password_for


class Clock:
    """The two-factor module's clock, moved on by whole TOTP steps."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = timedelta()
        monkeypatch.setattr(two_factor, "utcnow", self.now)

    def now(self) -> datetime:
        return utcnow() + self.offset

    def step(self) -> None:
        self.offset += timedelta(seconds=30)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@dataclass
class Enrolled:
    person: Person
    totp: pyotp.TOTP
    recovery: list[str]
    clock: Clock

    def code(self) -> str:
        """A fresh code: the clock moves on a step first, so it was never used."""
        self.clock.step()
        return self.totp.at(self.clock.now())


def enrol(api: ApiClient, clock: Clock, person: Person | None = None) -> Enrolled:
    person = person or api.signup()
    r = api.post("/me/2fa/setup", person)
    assert r.status_code == 200, r.text
    setup = r.json()
    assert setup["otpauth_uri"].startswith("otpauth://totp/")
    totp = pyotp.parse_uri(setup["otpauth_uri"])
    assert isinstance(totp, pyotp.TOTP) and totp.secret == setup["secret"]
    r = api.post("/me/2fa/confirm", person, json={"code": totp.at(clock.now())})
    assert r.status_code == 201, r.text
    return Enrolled(person, totp, r.json()["recovery_codes"], clock)


def login(api: ApiClient, person: Person) -> httpx.Response:
    return api.post(
        "/auth/login", json={"email": person.email, "password": password_for(person.name)}
    )


def ticket_of(api: ApiClient, person: Person) -> str:
    r = login(api, person)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "2fa_required"
    ticket: str = r.json()["ticket"]
    return ticket


def second_step(api: ApiClient, ticket: str, code: str) -> httpx.Response:
    return api.post("/auth/login/2fa", json={"ticket": ticket, "code": code})


def bearer(token: str) -> Person:
    return Person(id="", name="", email="", token=token)


# --------------------------------------------------------------------------- enrolment


def test_enrol_stores_the_secret_encrypted_and_codes_hashed(api: ApiClient, clock: Clock) -> None:
    alice = api.signup()
    assert api.get("/me/2fa", alice).json() == {
        "enabled": False,
        "enabled_at": None,
        "recovery_codes_left": 0,
    }
    # A wrong first code does not turn it on.
    api.post("/me/2fa/setup", alice)
    r = api.post("/me/2fa/confirm", alice, json={"code": "000000"})
    assert r.status_code == 422 and r.json()["error"] == "bad_2fa_code"
    assert api.get("/me/2fa", alice).json()["enabled"] is False
    e = enrol(api, clock, alice)
    assert len(e.recovery) == 10 and len(set(e.recovery)) == 10
    assert all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", c) for c in e.recovery)
    status = api.get("/me/2fa", alice).json()
    assert status["enabled"] is True and status["recovery_codes_left"] == 10
    # Enrolling again needs disabling first.
    assert api.post("/me/2fa/setup", alice).status_code == 409
    with api.db.session(write=False) as s:
        row = s.get(two_factor.UserTwoFactor, uuid.UUID(alice.id))
        assert row is not None and e.totp.secret not in row.secret_ciphertext
        hashes = list(
            s.scalars(
                select(two_factor.RecoveryCode.code_hash).where(
                    two_factor.RecoveryCode.user_id == uuid.UUID(alice.id)
                )
            )
        )
    assert len(hashes) == 10 and not set(hashes) & set(e.recovery)


def test_login_asks_for_the_code_and_a_code_works_once(api: ApiClient, clock: Clock) -> None:
    e = enrol(api, clock)
    ticket = ticket_of(api, e.person)
    # The ticket is not a session.
    assert api.get("/me", bearer(ticket)).status_code == 401
    code = e.code()
    r = second_step(api, ticket, code)
    assert r.status_code == 200, r.text
    session = bearer(r.json()["token"])
    assert api.get("/me", session).json()["name"] == e.person.name
    # The ticket is spent, and the same code is refused on a new ticket.
    assert second_step(api, ticket, e.code()).json()["error"] == "bad_ticket"
    again = ticket_of(api, e.person)
    r = second_step(api, again, code)
    assert r.status_code == 422 and r.json()["error"] == "bad_2fa_code"
    # An older code (of a step before the last used) is refused too.
    assert (
        second_step(api, again, e.totp.at(clock.now() - timedelta(seconds=30))).status_code == 422
    )
    assert second_step(api, again, e.code()).status_code == 200


def test_a_recovery_code_works_once(api: ApiClient, clock: Clock) -> None:
    e = enrol(api, clock)
    code = e.recovery[3]
    r = second_step(api, ticket_of(api, e.person), code.upper().replace("-", " "))
    assert r.status_code == 200, r.text
    assert api.get("/me/2fa", e.person).json()["recovery_codes_left"] == 9
    r = second_step(api, ticket_of(api, e.person), code)
    assert r.status_code == 422 and r.json()["error"] == "bad_2fa_code"
    # Someone else's codes are no use either.
    other = enrol(api, clock)
    r = second_step(api, ticket_of(api, other.person), e.recovery[4])
    assert r.status_code == 422


def test_wrong_codes_are_throttled_per_account(api: ApiClient, clock: Clock) -> None:
    api.set_settings(login_free_failures=3, login_delay_base_s=30.0, login_delay_max_s=60.0)
    e = enrol(api, clock)
    ticket = ticket_of(api, e.person)
    for _ in range(4):  # three free, the fourth starts a 30 s wait
        r = second_step(api, ticket, "123456")
        assert r.status_code == 422, r.text
    r = second_step(api, ticket, e.code())  # even the right code waits
    assert r.status_code == 429 and r.json()["error"] == "too_many_attempts"
    assert 25 <= int(r.headers["Retry-After"]) <= 30
    # Disabling and confirming count against the same account.
    r = api.request("DELETE", "/me/2fa", e.person, json={"code": e.code()})
    assert r.status_code == 429
    # Another account is not affected.
    other = enrol(api, clock)
    assert second_step(api, ticket_of(api, other.person), other.code()).status_code == 200


def test_disable_needs_a_code(api: ApiClient, clock: Clock) -> None:
    e = enrol(api, clock)
    r = api.request("DELETE", "/me/2fa", e.person, json={"code": "111111"})
    assert r.status_code == 422 and r.json()["error"] == "bad_2fa_code"
    r = api.request("DELETE", "/me/2fa", e.person, json={})
    assert r.status_code == 422
    r = api.request("DELETE", "/me/2fa", e.person, json={"code": e.code()})
    assert r.status_code == 204, r.text
    assert api.get("/me/2fa", e.person).json()["enabled"] is False
    # Both changes are in the audit table, as account events (no organization).
    with api.db.session(write=False) as s:
        actions = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.actor_id == uuid.UUID(e.person.id))
            .order_by(AuditEvent.id)
        ).all()
    assert list(actions) == ["2fa.enabled", "2fa.disabled"]
    # Signing in is one step again.
    assert login(api, e.person).status_code == 200
    assert api.request("DELETE", "/me/2fa", e.person, json={"code": e.code()}).status_code == 409


def test_creating_a_token_needs_a_recent_second_factor(api: ApiClient, clock: Clock) -> None:
    e = enrol(api, clock)
    # The session that confirmed enrolment just passed a code.
    r = api.post("/me/tokens", e.person, json={"name": "ci"})
    assert r.status_code == 201, r.text
    personal = bearer(r.json()["token"])
    # Personal tokens keep working, but never mint tokens with 2FA on.
    assert api.get("/me", personal).status_code == 200
    r = api.post("/me/tokens", personal, json={"name": "more"})
    assert r.status_code == 403 and r.json()["error"] == "recent_2fa_required"
    assert "cshare account 2fa verify" in r.json()["detail"]
    # A session that passed 2FA 11 minutes ago must confirm a code again.
    with api.db.transaction() as s:
        s.execute(
            update(ApiToken)
            .where(ApiToken.user_id == uuid.UUID(e.person.id), ApiToken.kind == "session")
            .values(second_factor_at=utcnow() - timedelta(minutes=11))
        )
    r = api.post("/me/tokens", e.person, json={"name": "late"})
    assert r.status_code == 403 and r.json()["error"] == "recent_2fa_required"
    assert api.post("/me/2fa/verify", e.person, json={"code": "000000"}).status_code == 422
    assert api.post("/me/2fa/verify", e.person, json={"code": e.code()}).status_code == 204
    assert api.post("/me/tokens", e.person, json={"name": "late"}).status_code == 201
    # A fresh sign-in through the code counts too; without 2FA nothing changes.
    r = second_step(api, ticket_of(api, e.person), e.code())
    assert api.post("/me/tokens", bearer(r.json()["token"]), json={"name": "x"}).status_code == 201
    plain = api.signup()
    assert api.post("/me/tokens", plain, json={"name": "x"}).status_code == 201


# --------------------------------------------------------------------------- the web


def _browser(api: ApiClient, token: str | None = None) -> TestClient:
    client = TestClient(api.client.app, raise_server_exceptions=False)
    if token:
        client.cookies.set("cshare_session", token)
    return client


def _form_token(client: TestClient, html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_web_enrolment_and_sign_in_with_a_code(api: ApiClient, clock: Clock) -> None:
    alice = api.signup()
    web = _browser(api, alice.token)
    page = web.get("/account")
    assert page.status_code == 200 and "Set up two-factor" in page.text
    form = {csrf.CSRF_FIELD: csrf.token_for_session(alice.token)}
    r = web.post("/account/2fa/setup", data=form, follow_redirects=False)
    assert r.status_code == 303
    page = web.get("/account")
    assert 'src="data:image/svg+xml' in page.text
    found = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text)
    assert found is not None
    totp = pyotp.TOTP(found.group(1))
    r = web.post("/account/2fa/confirm", data={**form, "code": "999999"})
    assert r.status_code == 422 and "not right" in r.text
    r = web.post("/account/2fa/confirm", data={**form, "code": totp.at(clock.now())})
    assert r.status_code == 200 and 'id="recovery-codes"' in r.text
    assert "Recovery codes left: 10" in web.get("/account").text
    # Signing in: password, then the code form, then the cookie.
    anon = _browser(api)
    token = _form_token(anon, anon.get("/login").text)
    r = anon.post(
        "/login",
        data={"email": alice.email, "password": password_for(alice.name), csrf.CSRF_FIELD: token},
    )
    assert r.status_code == 200 and 'action="/login/2fa"' in r.text
    assert anon.cookies.get("cshare_session") is None
    ticket = re.search(r'name="ticket" value="([^"]+)"', r.text)
    assert ticket is not None
    base = {"ticket": ticket.group(1), "next": "/welcome", csrf.CSRF_FIELD: token}
    r = anon.post("/login/2fa", data={**base, "code": "000000"})
    assert r.status_code == 422 and 'action="/login/2fa"' in r.text
    clock.step()
    r = anon.post("/login/2fa", data={**base, "code": totp.at(clock.now())}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/welcome"
    assert anon.cookies.get("cshare_session")


# --------------------------------------------------------------------------- require_2fa


@dataclass
class Org:
    slug: str
    owner: Enrolled
    admin: Person
    member: Person


@pytest.fixture
def org(api: ApiClient, clock: Clock) -> Org:
    owner = enrol(api, clock)
    slug = api.create_org(owner.person, name="Acme Research")
    admin, member = api.signup(), api.signup()
    api.add_member(slug, owner.person, admin, role="admin")
    api.add_member(slug, owner.person, member)
    return Org(slug, owner, admin, member)


def require(api: ApiClient, org: Org, on: bool = True) -> httpx.Response:
    return api.put(
        f"/orgs/{org.slug}/settings", org.owner.person, json={"security": {"require_2fa": on}}
    )


def test_turning_it_on_needs_own_2fa_and_counts_the_rest(
    api: ApiClient, org: Org, clock: Clock
) -> None:
    r = api.put(f"/orgs/{org.slug}/settings", org.admin, json={"security": {"require_2fa": True}})
    assert r.status_code == 409 and r.json()["error"] == "own_2fa_required"
    r = api.put(f"/orgs/{org.slug}/settings", org.owner.person, json={"security": {"x": 1}})
    assert r.status_code == 422 and r.json()["field"] == "security.x"
    r = require(api, org)
    assert r.status_code == 200, r.text
    assert r.json()["security"] == {"require_2fa": True}
    assert r.json()["members_without_2fa"] == 2  # the admin and the member
    enrol(api, clock, org.member)
    r = api.get(f"/orgs/{org.slug}/settings", org.owner.person)
    assert r.json()["members_without_2fa"] == 1
    # Audited like every settings change.
    events = api.get(f"/orgs/{org.slug}/audit", org.owner.person).json()["items"]
    assert any(ev["after"]["security"] == {"require_2fa": True} for ev in events if ev["after"])


def test_members_without_2fa_are_turned_away(api: ApiClient, org: Org, clock: Clock) -> None:
    assert require(api, org).status_code == 200
    for path in ("", "/members", "/jobs", "/machines", "/datasets", "/settings"):
        r = api.get(f"/orgs/{org.slug}{path}", org.member)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"] == "two_factor_required"
        assert "Enable two-factor authentication to access Acme Research" in r.json()["detail"]
    assert api.get(f"/orgs/{org.slug}/members", org.admin).status_code == 403
    # Through the Prefect proxy too (people's tokens resolve their membership the same way).
    r = api.client.get(
        f"/prefect/{org.slug}/api/health", headers={"Authorization": f"Bearer {org.member.token}"}
    )
    assert r.status_code == 403 and r.json()["error"] == "two_factor_required", r.text
    # Outside the org the account works, and enrolling lets them in.
    assert api.get("/me", org.member).status_code == 200
    assert org.slug in [o["slug"] for o in api.get("/orgs", org.member).json()["items"]]
    enrol(api, clock, org.member)
    assert api.get(f"/orgs/{org.slug}/jobs", org.member).status_code == 200
    # A console page answers 403 with the sentence too.
    web = _browser(api, org.admin.token)
    page = web.get(f"/orgs/{org.slug}/jobs")
    assert page.status_code == 403
    assert "Enable two-factor authentication to access Acme Research" in page.text
    # Turned off: everyone is back.
    assert require(api, org, on=False).status_code == 200
    assert web.get(f"/orgs/{org.slug}/jobs").status_code == 200


def test_machines_and_running_jobs_are_not_stopped(api: ApiClient, org: Org) -> None:
    # The member's machine, registered before the requirement.
    api.put(
        f"/orgs/{org.slug}/settings",
        org.owner.person,
        json={"machines": {"approval_required": False}},
    )
    body: dict[str, Any] = {"name": "box", "machine_type": "cpu", "slots": 1}
    r = api.post(f"/orgs/{org.slug}/machines", org.member, json=body)
    assert r.status_code == 201, r.text
    machine_token = r.json()["machine_token"]
    job = make_job(api.db, org.slug, org.member.id, inputs=[], state="running")
    token = job_token(api.db, job)
    assert require(api, org).status_code == 200
    # The member is turned away ...
    r = api.get(f"/orgs/{org.slug}/jobs/{job.id}", org.member)
    assert r.status_code == 403 and r.json()["error"] == "two_factor_required"
    # ... their machine keeps heartbeating and their job's own credential keeps working.
    r = api.client.post(
        f"{PREFIX}/agent/heartbeat", headers=as_job(machine_token), json={"running": []}
    )
    assert r.status_code == 200, r.text
    r = api.client.get(f"{PREFIX}/orgs/{org.slug}/jobs/{job.id}/inputs", headers=as_job(token))
    assert r.status_code == 200, r.text


def test_members_list_shows_2fa_to_admins_only(api: ApiClient, org: Org) -> None:
    def listing(who: Person) -> dict[str, Any]:
        r = api.get(f"/orgs/{org.slug}/members", who)
        assert r.status_code == 200, r.text
        return {m["user"]["name"]: m["two_factor"] for m in r.json()["items"]}

    expected = {org.owner.person.name: True, org.admin.name: False, org.member.name: False}
    assert listing(org.owner.person) == expected
    assert listing(org.admin) == expected
    assert set(listing(org.member).values()) == {None}
    # The console's members page shows the column to admins.
    page = _browser(api, org.admin.token).get(f"/orgs/{org.slug}/members")
    assert page.status_code == 200 and "Two-factor" in page.text
    page = _browser(api, org.member.token).get(f"/orgs/{org.slug}/members")
    assert page.status_code == 200 and "Two-factor" not in page.text


def test_the_console_settings_page_turns_it_on(api: ApiClient, org: Org) -> None:
    def post(who: Person, data: dict[str, str]) -> httpx.Response:
        form = {csrf.CSRF_FIELD: csrf.token_for_session(who.token), **data}
        web = _browser(api, who.token)
        url = f"/orgs/{org.slug}/settings/security"
        response: httpx.Response = web.post(url, data=form, follow_redirects=False)
        return response

    r = post(org.admin, {"require_2fa": "yes"})
    assert r.status_code == 409 and "before requiring it" in r.text
    r = post(org.owner.person, {"require_2fa": "yes"})
    assert r.status_code == 303, r.text
    page = _browser(api, org.owner.person.token).get(f"/orgs/{org.slug}/settings")
    assert 'id="without-2fa"' in page.text and "2 members without two-factor" in page.text
    assert post(org.owner.person, {}).status_code == 303
    assert api.get(f"/orgs/{org.slug}/jobs", org.member).status_code == 200


def test_key_rotation_reseals_the_secrets(api: ApiClient, clock: Clock) -> None:
    e = enrol(api, clock)
    old = secret_box.key_file(get_settings()).read_text().strip()
    new = Fernet.generate_key().decode()
    rotating = get_settings().model_copy(update={"secrets_key": SecretStr(f"{new},{old}")})
    only_new = get_settings().model_copy(update={"secrets_key": SecretStr(new)})
    with api.db.session() as s:
        assert two_factor.reseal(s, rotating) == 1
        s.commit()
    with api.db.session(write=False) as s:
        row = s.get(two_factor.UserTwoFactor, uuid.UUID(e.person.id))
        assert row is not None
        opened = secret_box.decrypt(only_new, row.secret_ciphertext, label="test")
    assert opened == e.totp.secret
