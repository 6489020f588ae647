"""Login abuse without lockout: growing waits per account and per address, capped; no
e-mail enumeration; rate limits on sign-in, sign-up and token creation.

The timed tests use a small base delay and cap (whole seconds, as `Retry-After` is) to
stay fast; the production schedule is checked as arithmetic.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from fastapi.testclient import TestClient

from api.app import create_app
from api.web import csrf
from orgs.config import Settings, get_settings
from orgs.db import Database
from orgs.login_throttle import policies_from
from policies.throttle import schedule
from tests.support import ApiClient, Person, password_for, serve_in_thread

PROXY = "10.0.0.1"  # the trusted proxy in front of the app in these tests
WRONG = "not-the-password"


def _settings(**overrides: Any) -> Settings:
    return get_settings().model_copy(
        update={"notifications_enabled": False, "dispatcher_enabled": False, **overrides}
    )


@contextmanager
def _api(db: Database, **overrides: Any) -> Iterator[ApiClient]:
    """The app behind a trusted proxy at PROXY: X-Forwarded-For names the client."""
    app = create_app(_settings(trusted_proxies=PROXY, **overrides), db)
    with TestClient(app, raise_server_exceptions=False, client=(PROXY, 40000)) as client:
        yield ApiClient(client, db)


def _login(api: ApiClient, email: str, password: str, address: str) -> httpx.Response:
    return api.post(
        "/auth/login",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": address},
    )


def _answer(r: httpx.Response) -> tuple[int, Any, str | None]:
    """What tells one answer from another (each request's own id aside)."""
    body = {k: v for k, v in r.json().items() if k != "request_id"}
    return r.status_code, body, r.headers.get("retry-after")


def test_production_schedule_is_bounded() -> None:
    """Defaults: five free failures, then 1, 2, 4 ... s, never more than 60 s."""
    account = policies_from(Settings())["account"]
    waits = schedule(account, 14)
    assert waits == [0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert max(schedule(account, 10_000)) == 60
    # After 10 wrong passwords in a row the right one works 16 s after the last.
    assert waits[9] == 16
    address = policies_from(Settings())["address"]
    assert schedule(address, 21)[-2:] == [0, 1] and max(schedule(address, 500)) == 60


def test_ten_wrong_passwords_then_the_right_one_works(database: Database) -> None:
    # Free failures 7, then waits of 1 s and 2 s (the cap): Retry-After 1, 2, 2.
    cap = 2
    with _api(
        database, login_free_failures=7, login_delay_base_s=1.0, login_delay_max_s=cap
    ) as api:
        alice = api.signup("alice")
        seen: list[int] = []
        failures = 0
        while failures < 10:
            r = _login(api, alice.email, WRONG, "198.51.100.1")
            if r.status_code == 429:
                assert r.json()["error"] == "too_many_attempts"
                seen.append(int(r.headers["retry-after"]))
                # Hammering during the wait is refused and does not lengthen it.
                for _ in range(3):
                    again = _login(api, alice.email, WRONG, "198.51.100.1")
                    assert again.status_code == 429
                    assert int(again.headers["retry-after"]) <= seen[-1]
                time.sleep(seen[-1])
                continue
            assert r.status_code == 401 and r.json()["error"] == "bad_credentials"
            failures += 1
        last_failure = time.monotonic()
        r = _login(api, alice.email, password_for("alice"), "198.51.100.1")
        assert r.status_code == 429
        seen.append(int(r.headers["retry-after"]))
        time.sleep(seen[-1])
        r = _login(api, alice.email, password_for("alice"), "198.51.100.1")
        assert r.status_code == 200, r.text
        assert time.monotonic() - last_failure <= cap + 1.5
        assert seen == sorted(seen) and seen[0] == 1 and max(seen) == cap
        # The right password reset the account: the next mistake is a free one again.
        assert _login(api, alice.email, WRONG, "198.51.100.1").status_code == 401
        assert _login(api, alice.email, password_for("alice"), "198.51.100.1").status_code == 200


def test_concurrent_guesses_when_a_wait_ends_are_checked_once(database: Database) -> None:
    """A burst of guesses at one account: only the first is checked, then the wait starts."""
    settings = _settings(login_free_failures=1, login_delay_base_s=30.0)
    with ApiClient.start(database) as setup:
        alice = setup.signup("alice")
    with serve_in_thread(create_app(settings, database)) as url:
        body = {"email": alice.email, "password": WRONG}
        assert httpx.post(f"{url}/auth/login", json=body).status_code == 401  # the free one
        codes: list[int] = []
        burst = 16
        start = threading.Barrier(burst)

        def guess() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                client.get("/healthz")  # connected before the burst
                start.wait()
                codes.append(client.post("/auth/login", json=body).status_code)

        threads = [threading.Thread(target=guess) for _ in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(codes) == [401] + [429] * (burst - 1)


def test_throttled_per_address_across_accounts(database: Database) -> None:
    with _api(database, login_free_failures_per_address=3, login_delay_base_s=30.0) as api:
        alice = api.signup("alice")
        guesser = "198.51.100.7"
        # Right passwords do not count against the address (the try is given back).
        for _ in range(5):
            assert _login(api, alice.email, password_for("alice"), guesser).status_code == 200
        # One wrong password each on four accounts (known or not) from one address.
        for email in (f"{uuid.uuid4().hex[:8]}@example.test" for _ in range(3)):
            assert _login(api, email, WRONG, guesser).status_code == 401
        assert _login(api, api.signup().email, WRONG, guesser).status_code == 401
        r = _login(api, alice.email, password_for("alice"), guesser)
        assert r.status_code == 429 and 29 <= int(r.headers["retry-after"]) <= 30
        # The same account from another address is not held up (its own count is 0).
        assert _login(api, alice.email, password_for("alice"), "198.51.100.8").status_code == 200
        # IPv6 clients count per /64: rotating the low bits does not escape the wait.
        for n in range(4):
            assert _login(api, f"x{n}@example.test", WRONG, f"2001:db8::{n + 1}").status_code == 401
        assert _login(api, "y@example.test", WRONG, "2001:db8::ff").status_code == 429

        # A client that is not the trusted proxy cannot pick its address with the header.
        direct = TestClient(
            api.client.app, raise_server_exceptions=False, client=("203.0.113.9", 1)
        )
        codes = [
            direct.post(
                "/api/v1/auth/login",
                json={"email": f"z{n}@example.test", "password": WRONG},
                headers={"X-Forwarded-For": f"192.0.2.{n}"},
            ).status_code
            for n in range(5)
        ]
        assert codes == [401, 401, 401, 401, 429]


def test_unknown_email_and_wrong_password_answer_alike(database: Database) -> None:
    with _api(database, login_delay_base_s=30.0) as api:
        alice = api.signup("alice")
        ghost = "ghost@example.test"
        known = [_answer(_login(api, alice.email, WRONG, "198.51.100.1")) for _ in range(7)]
        unknown = [_answer(_login(api, ghost, WRONG, "198.51.100.2")) for _ in range(7)]
        assert known == unknown
        assert known[0] == (
            401,
            {"error": "bad_credentials", "detail": "Wrong email or password."},
            None,
        )
        assert known[-1][0] == 429 and known[-1][1]["error"] == "too_many_attempts"
        # Sign-up: a taken e-mail and a taken name get one and the same answer.
        by_email = api.post(
            "/auth/signup",
            json={"email": alice.email, "name": "fresh-name", "password": "p" * 12},
        )
        by_name = api.post(
            "/auth/signup",
            json={"email": "fresh@example.test", "name": "alice", "password": "p" * 12},
        )
        assert by_email.status_code == by_name.status_code == 409
        assert _answer(by_email) == _answer(by_name)
        assert by_email.json()["error"] == "email_or_name_taken"
        assert "email" not in by_email.json().get("field", "")


def test_rate_limits_on_signup_login_and_tokens(database: Database) -> None:
    with _api(
        database,
        rate_limit_signup="3/minute",
        rate_limit_login="2/minute",
        rate_limit_tokens="2/minute",
    ) as api:
        alice, bob = api.signup("alice"), api.signup("bob")
        api.signup()
        r = api.post(
            "/auth/signup",
            json={"email": "d@example.test", "name": "dave", "password": "p" * 12},
        )
        _assert_limited(r)
        # Per client address: another one may still sign up.
        r = api.post(
            "/auth/signup",
            json={"email": "d@example.test", "name": "dave", "password": "p" * 12},
            headers={"X-Forwarded-For": "198.51.100.9"},
        )
        assert r.status_code == 201
        # Token creation is counted per user.
        for n in range(2):
            assert api.post("/me/tokens", alice, json={"name": f"t{n}"}).status_code == 201
        _assert_limited(api.post("/me/tokens", alice, json={"name": "t3"}))
        assert api.post("/me/tokens", bob, json={"name": "t1"}).status_code == 201
        # Sign-ins per address, right password or not.
        for _ in range(2):
            assert _login(api, bob.email, password_for("bob"), "198.51.100.3").status_code == 200
        _assert_limited(_login(api, bob.email, password_for("bob"), "198.51.100.3"))


def _assert_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "too_many_attempts" and r.json()["detail"]
    assert 1 <= int(r.headers["retry-after"]) <= 60


def _csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    return token.group(1)


def test_web_sign_in_uses_the_throttle_and_shows_the_wait(database: Database) -> None:
    with _api(database, login_free_failures=1, login_delay_base_s=30.0) as api:
        alice: Person = api.signup("alice")
        web = TestClient(api.client.app, raise_server_exceptions=False, client=(PROXY, 1))

        def sign_in(password: str) -> httpx.Response:
            form = {"email": alice.email, "password": password}
            form[csrf.CSRF_FIELD] = _csrf(web, "/login")
            response: httpx.Response = web.post("/login", data=form, follow_redirects=False)
            return response

        assert sign_in(WRONG).status_code == 401
        assert sign_in(WRONG).status_code == 401
        r = sign_in(password_for("alice"))
        assert r.status_code == 429 and 29 <= int(r.headers["retry-after"]) <= 30
        assert re.search(r"try again in (29|30) seconds", r.text)
        # The API sees the same wait (one throttle for both).
        assert _login(api, alice.email, password_for("alice"), "198.51.100.50").status_code == 429
        # Sign-up's taken answer does not say which field is taken.
        form = {"email": alice.email, "name": "someone-new", "password": "p" * 12}
        form[csrf.CSRF_FIELD] = _csrf(web, "/signup")
        r = web.post("/signup", data=form, follow_redirects=False)
        assert r.status_code == 409 and "cannot be created with that email and name" in r.text


def test_forwarded_for_means_nothing_without_trusted_proxies(database: Database) -> None:
    """Without CSHARE_TRUSTED_PROXIES the peer is the client, whatever the header says."""
    app = create_app(
        _settings(login_free_failures_per_address=0, login_delay_base_s=30.0), database
    )
    with TestClient(app, raise_server_exceptions=False, client=("127.0.0.1", 1)) as client:
        api = ApiClient(client, database)
        assert _login(api, "a@example.test", WRONG, "198.51.100.1").status_code == 401
        assert _login(api, "b@example.test", WRONG, "198.51.100.2").status_code == 429
