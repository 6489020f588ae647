"""Accounts: sign-up, login, throttling, personal tokens, logout."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from orgs.models import ApiToken, User
from tests.support import ApiClient, password_for


def test_signup_login_me_and_logout(api: ApiClient) -> None:
    alice = api.signup("alice")
    assert api.get("/me", alice).json()["name"] == "alice"
    r = api.post("/auth/login", json={"email": alice.email, "password": password_for("alice")})
    assert r.status_code == 200
    token = r.json()["token"]
    assert api.get("/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert api.post("/auth/logout", headers={"Authorization": f"Bearer {token}"}).status_code == 204
    r = api.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["error"] == "bad_token"


def test_secrets_are_stored_hashed(api: ApiClient) -> None:
    alice = api.signup("alice")
    with api.db.session() as s:
        user = s.scalars(select(User)).one()
        assert user.password_hash.startswith("$argon2id$")
        hashes = set(s.scalars(select(ApiToken.token_hash)))
    assert alice.token not in hashes
    assert hashlib.sha256(alice.token.encode()).hexdigest() in hashes
    assert len(alice.token.split("_", 2)[2]) >= 43  # 256 bits, url-safe


def test_duplicate_signup_and_bad_input(api: ApiClient) -> None:
    api.signup("alice")
    r = api.post(
        "/auth/signup", json={"email": "alice@example.test", "name": "x", "password": "p" * 9}
    )
    assert r.status_code == 409 and r.json()["error"] == "email_or_name_taken"
    r = api.post("/auth/signup", json={"email": "nope", "name": "bob", "password": "p" * 9})
    assert r.status_code == 422 and r.json()["field"] == "email"
    r = api.post("/auth/signup", json={"email": "b@x.io", "name": "bob", "password": "short"})
    assert r.status_code == 422 and r.json()["field"] == "password"


def test_login_is_throttled_after_repeated_failures(api: ApiClient) -> None:
    alice = api.signup("alice")
    for _ in range(6):  # five free failures; the sixth starts a 1 s wait
        r = api.post("/auth/login", json={"email": alice.email, "password": "wrong-password"})
        assert r.status_code == 401
    r = api.post("/auth/login", json={"email": alice.email, "password": password_for("alice")})
    assert r.status_code == 429 and r.json()["error"] == "too_many_attempts"
    assert r.headers["retry-after"] == "1"
    r = api.post("/auth/login", json={"email": "ghost@example.test", "password": "whatever1"})
    assert r.status_code == 401 and r.json()["detail"] == "Wrong email or password."


def test_personal_tokens_expire_and_revoke(api: ApiClient) -> None:
    alice = api.signup("alice")
    r = api.post("/me/tokens", alice, json={"name": "ci", "expires_in_days": 30})
    assert r.status_code == 201
    secret, info = r.json()["token"], r.json()["info"]
    assert secret.startswith("cs_p_") and "token" not in info
    pat = {"Authorization": f"Bearer {secret}"}
    assert api.get("/me", headers=pat).status_code == 200
    listed = api.get("/me/tokens", alice).json()["items"]
    assert [t["id"] for t in listed] == [info["id"]]
    assert all(secret not in str(t) for t in listed)
    assert api.delete(f"/me/tokens/{info['id']}", alice).status_code == 204
    assert api.get("/me", headers=pat).status_code == 401
    bob = api.signup("bob")
    assert api.delete(f"/me/tokens/{info['id']}", bob).status_code == 404
    r = api.post("/me/tokens", alice, json={"name": "x", "expires_in_days": 0})
    assert r.status_code == 422
