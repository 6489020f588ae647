"""Org secrets on SQLite and PostgreSQL: write-only API, encryption at rest, rotation,
who may do what, and the CLI. Every test checks the value never comes back out."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select

from orgs import secret_box, secrets
from orgs.config import Settings, get_settings
from orgs.models import AuditEvent, Organization
from policies.errors import NotFound
from tests.integration.test_cli import (  # noqa: F401  (fixtures used by name)
    Cli,
    make_cli,
    server_url,
    signup,
)
from tests.support import ApiClient, Person


def _value() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


def _with_key(*keys: bytes) -> Settings:
    return get_settings().model_copy(
        update={"secrets_key": SecretStr(",".join(k.decode() for k in keys))}
    )


class Org:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.owner = api.signup()
        self.admin = api.signup()
        self.member = api.signup()
        self.slug = api.create_org(self.owner)
        api.add_member(self.slug, self.owner, self.admin, "admin")
        api.add_member(self.slug, self.owner, self.member, "member")
        with api.db.session() as s:
            self.id = s.scalars(select(Organization.id).where(Organization.slug == self.slug)).one()

    def put(self, name: str, value: Any, who: Person | None = None) -> httpx.Response:
        return self.api.put(f"/orgs/{self.slug}/secrets/{name}", who or self.owner, json=value)

    def names(self, who: Person | None = None) -> list[str]:
        r = self.api.get(f"/orgs/{self.slug}/secrets", who or self.owner)
        assert r.status_code == 200, r.text
        return [s["name"] for s in r.json()["items"]]


@pytest.fixture
def org(api: ApiClient) -> Iterator[Org]:
    yield Org(api)


def _raw_ciphertexts(api: ApiClient, org_id: uuid.UUID) -> dict[str, str]:
    with api.db.session() as s:
        # The column as stored (no type decodes it): what a stolen backup would hold.
        rows = s.execute(
            select(secrets.OrgSecret.name, secrets.OrgSecret.ciphertext).where(
                secrets.OrgSecret.org_id == org_id
            )
        ).all()
    return {name: ciphertext for name, ciphertext in rows}


def _audit_text(api: ApiClient, org_id: uuid.UUID) -> tuple[list[str], str]:
    with api.db.session() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.org_id == org_id)).all()
        actions = [r.action for r in rows]
        dumped = json.dumps([[r.action, r.target_id, r.before, r.after] for r in rows], default=str)
    return actions, dumped


def test_set_list_delete_never_show_the_value(api: ApiClient, org: Org) -> None:
    value, other = _value(), _value()
    seen: list[str] = []

    r = org.put("GITHUB_TOKEN", {"value": value})
    seen.append(r.text)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"name", "created_at", "updated_at", "updated_by"}
    assert body["name"] == "GITHUB_TOKEN"
    assert body["updated_by"]["name"] == org.owner.name

    # An admin replaces it: same name, new author, created_at kept.
    r = org.put("GITHUB_TOKEN", {"value": other}, org.admin)
    seen.append(r.text)
    assert r.status_code == 200, r.text
    assert r.json()["updated_by"]["name"] == org.admin.name
    assert r.json()["created_at"] == body["created_at"]
    seen.append(org.put("DEPLOY_KEY_2", {"value": value}, org.admin).text)

    r = api.get(f"/orgs/{org.slug}/secrets", org.admin)
    seen.append(r.text)
    assert [s["name"] for s in r.json()["items"]] == ["DEPLOY_KEY_2", "GITHUB_TOKEN"]
    assert r.json()["total"] == 2
    seen.append(api.get(f"/orgs/{org.slug}/audit", org.owner).text)

    # At rest: Fernet tokens, not the value, and each one different.
    raw = _raw_ciphertexts(api, org.id)
    assert set(raw) == {"GITHUB_TOKEN", "DEPLOY_KEY_2"}
    for ciphertext in raw.values():
        assert value not in ciphertext and other not in ciphertext
    with api.db.session() as s:
        assert secrets.reveal(s, org.id, "GITHUB_TOKEN") == other
        assert secrets.reveal(s, org.id, "DEPLOY_KEY_2") == value

    r = api.delete(f"/orgs/{org.slug}/secrets/GITHUB_TOKEN", org.owner)
    assert r.status_code == 204, r.text
    r = api.delete(f"/orgs/{org.slug}/secrets/GITHUB_TOKEN", org.owner)
    seen.append(r.text)
    assert r.status_code == 404 and r.json()["error"] == "secret_not_found"
    assert org.names() == ["DEPLOY_KEY_2"]

    actions, audit_dump = _audit_text(api, org.id)
    assert actions.count("secret.set") == 3 and actions.count("secret.deleted") == 1
    assert "GITHUB_TOKEN" in audit_dump
    for shown in [*seen, audit_dump]:
        assert value not in shown and other not in shown


def test_members_get_403_outsiders_404_other_orgs_see_nothing(api: ApiClient, org: Org) -> None:
    value = _value()
    assert org.put("API_TOKEN", {"value": value}).status_code == 200
    outsider = api.signup()
    other_slug = api.create_org(outsider)
    path = f"/orgs/{org.slug}/secrets"

    for method, url, body in (
        ("PUT", f"{path}/API_TOKEN", {"value": "overwritten"}),
        ("PUT", f"{path}/NEW_ONE", {"value": "v-7f3a9c"}),
        ("GET", path, None),
        ("DELETE", f"{path}/API_TOKEN", None),
    ):
        r = api.request(method, url, org.member, json=body)
        assert r.status_code == 403, (method, url, r.text)
        assert "admins and owners" in r.json()["detail"]
        r = api.request(method, url, outsider, json=body)
        assert r.status_code == 404, (method, url, r.text)
        assert r.json()["error"] == "org_not_found"
        assert value not in r.text

    # The outsider's own org has no such secret, and cannot reach ours by name.
    assert api.get(f"/orgs/{other_slug}/secrets", outsider).json()["items"] == []
    r = api.delete(f"/orgs/{other_slug}/secrets/API_TOKEN", outsider)
    assert r.status_code == 404
    with api.db.session() as s:
        other_id = s.scalars(select(Organization.id).where(Organization.slug == other_slug)).one()
        with pytest.raises(NotFound):
            secrets.reveal(s, other_id, "API_TOKEN")
        assert secrets.reveal(s, org.id, "API_TOKEN") == value  # untouched
    assert org.names() == ["API_TOKEN"]


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("github-token", {"value": "v-7f3a9c"}, "name"),
        ("9LIVES", {"value": "v-7f3a9c"}, "name"),
        ("A" * 65, {"value": "v-7f3a9c"}, "name"),
        ("GOOD", {"value": ""}, "value"),
        ("GOOD", {"value": 42}, "value"),
        ("GOOD", {"value": "v-7f3a9c", "extra": 1}, "extra"),
        ("GOOD", {"value": "é" * (32 * 1024 + 1)}, "value"),  # 64 KiB + 2 bytes
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    api: ApiClient, org: Org, name: str, body: dict[str, Any], field: str
) -> None:
    r = org.put(name, body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    value = body.get("value")
    if isinstance(value, str) and value:
        assert value not in r.text
    assert org.names() == []


def test_a_value_of_exactly_64_kib_is_kept(api: ApiClient, org: Org) -> None:
    value = "k" * (64 * 1024)
    assert org.put("BIG", {"value": value}).status_code == 200
    with api.db.session() as s:
        assert secrets.reveal(s, org.id, "BIG") == value


def test_rotation_reencrypts_and_old_values_still_decrypt(api: ApiClient, org: Org) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    value = _value()
    api.set_settings(secrets_key=SecretStr(old.decode()))
    assert org.put("ROTATE_ME", {"value": value}).status_code == 200
    before = _raw_ciphertexts(api, org.id)["ROTATE_ME"]
    assert Fernet(old).decrypt(before.encode()).decode() == value

    # The new key first: the old row still opens, new writes use the new key.
    both = _with_key(new, old)
    with api.db.session() as s:
        assert secrets.reveal(s, org.id, "ROTATE_ME", settings=both) == value
        assert secrets.rotate_all(s, both) >= 1
    after = _raw_ciphertexts(api, org.id)["ROTATE_ME"]
    assert after != before and value not in after
    assert Fernet(new).decrypt(after.encode()).decode() == value

    # The old key can go now; alone, it no longer opens the row: a clear error.
    with api.db.session() as s:
        assert secrets.reveal(s, org.id, "ROTATE_ME", settings=_with_key(new)) == value
        with pytest.raises(secret_box.SecretsKeyError) as caught:
            secrets.reveal(s, org.id, "ROTATE_ME", settings=_with_key(old))
    message = caught.value.detail
    assert "ROTATE_ME" in message and "cannot be decrypted" in message
    assert value not in message and old.decode() not in message


def test_a_wrong_or_malformed_key_is_a_clear_error_not_a_500(api: ApiClient, org: Org) -> None:
    value = _value()
    assert org.put("KEPT", {"value": value}).status_code == 200
    before = _raw_ciphertexts(api, org.id)

    bad = "not-a-key"
    api.set_settings(secrets_key=SecretStr(f"{Fernet.generate_key().decode()},{bad}"))
    r = org.put("KEPT", {"value": _value()})
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "secrets_key"
    assert "CSHARE_SECRETS_KEY entry 2" in r.json()["detail"]
    assert bad not in r.json()["detail"]
    assert _raw_ciphertexts(api, org.id) == before  # nothing half-done

    # Rotation with a key that never encrypted the row: refused, nothing changed.
    with api.db.session() as s, pytest.raises(secret_box.SecretsKeyError) as caught:
        secrets.rotate_all(s, _with_key(Fernet.generate_key()))
    assert "KEPT" in caught.value.detail and org.slug in caught.value.detail
    assert _raw_ciphertexts(api, org.id) == before


def test_key_file_is_made_0600_once(tmp_path: Path) -> None:
    settings = get_settings().model_copy(update={"home": tmp_path, "secrets_key": None})
    token = secret_box.encrypt(settings, "hello")
    path = secret_box.key_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = path.read_bytes().strip()
    assert Fernet(key).decrypt(token.encode()) == b"hello"
    secret_box._keyring.cache_clear()  # a restarted server reads the same file
    assert secret_box.decrypt(settings, token, label="t") == "hello"
    assert path.read_bytes().strip() == key


def test_cli_round_trip(make_cli: Any, tmp_path: Path, sqlite_database: Any) -> None:  # noqa: F811
    alice: Cli = make_cli("alice")
    signup(alice, "alice")
    alice("org", "create", "Secret Org", "--slug", "secret-org")
    alice("org", "use", "secret-org")
    value, file_value = _value(), f"-----BEGIN KEY-----\n{_value()}\n-----END KEY-----\n"
    outputs: list[str] = []

    r = alice("secret", "set", "GIT_TOKEN", "--value-stdin", input=value + "\n")
    outputs.append(r.stdout + r.stderr)
    assert "GIT_TOKEN" in r.stdout
    key_file = tmp_path / "deploy_key"
    key_file.write_text(file_value)
    outputs.append(alice("secret", "set", "DEPLOY_KEY", "--value-file", str(key_file)).stdout)
    listed = alice.json("secret", "list")
    assert [s["name"] for s in listed["items"]] == ["DEPLOY_KEY", "GIT_TOKEN"]
    outputs.append(json.dumps(listed))
    outputs.append(alice("secret", "list").stdout)

    # The server stored the value exactly: one line without its newline, a file as is.
    with sqlite_database.session() as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == "secret-org")).one()
        assert secrets.reveal(s, org_id, "GIT_TOKEN") == value
        assert secrets.reveal(s, org_id, "DEPLOY_KEY") == file_value

    r = alice("secret", "set", "bad-name", "--value-stdin", input="x\n", code=1)
    assert "A-Z" in r.stderr
    r = alice("secret", "set", "NO_VALUE", code=2)
    assert "--value-stdin" in r.stderr

    # Operator rotation next to the database: new key first, the key file's key after.
    old = secret_box.key_file(get_settings()).read_text().strip()
    new = Fernet.generate_key().decode()
    db_url = sqlite_database.engine.url.render_as_string(hide_password=False)
    server_env = {"CSHARE_DATABASE_URL": db_url, "CSHARE_SECRETS_KEY": f"{new},{old}"}
    get_settings.cache_clear()
    try:
        r = alice("db", "rotate-secrets", env=server_env)
        assert "Re-encrypted 2 secret(s)" in r.stdout
        outputs.append(r.stdout)
        # A key that never encrypted them: refused, naming the secret, changing nothing.
        wrong = {**server_env, "CSHARE_SECRETS_KEY": Fernet.generate_key().decode()}
        get_settings.cache_clear()  # the CLI reads the server settings once per process
        r = alice("db", "rotate-secrets", env=wrong, code=1)
        assert "Nothing was changed" in r.stderr and "cannot be decrypted" in r.stderr
        outputs.append(r.stderr)
    finally:
        get_settings.cache_clear()
    with sqlite_database.session() as s:
        assert secrets.reveal(s, org_id, "GIT_TOKEN", settings=_with_key(new.encode())) == value

    outputs.append(alice("secret", "delete", "GIT_TOKEN", "--yes").stdout)
    assert [s["name"] for s in alice.json("secret", "list")["items"]] == ["DEPLOY_KEY"]
    for shown in outputs:
        assert value not in shown and file_value.strip() not in shown


def test_console_page_is_write_only(api: ApiClient, org: Org) -> None:
    from fastapi.testclient import TestClient

    from api.web import csrf
    from api.web import session as web_session

    value = _value()
    browser = TestClient(api.client.app, raise_server_exceptions=False, follow_redirects=False)
    browser.cookies.set(web_session.SESSION_COOKIE, org.admin.token)
    form = {csrf.CSRF_FIELD: csrf.token_for_session(org.admin.token)}
    url = f"/orgs/{org.slug}/secrets"

    r = browser.post(url, data={**form, "name": "WEB_TOKEN", "value": value})
    assert r.status_code == 303, r.text
    r = browser.post(url, data={**form, "name": "lower-case", "value": value})
    assert r.status_code == 422 and "A-Z" in r.text and value not in r.text
    page = browser.get(url)
    assert page.status_code == 200 and "WEB_TOKEN" in page.text and value not in page.text
    r = browser.post(f"{url}/WEB_TOKEN/delete", data=form)
    assert r.status_code == 303
    assert org.names() == []
