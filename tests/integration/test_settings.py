"""Settings and limits: GET/PUT as JSON or YAML, errors naming the key, versions, audit."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from orgs.models import AuditEvent, Organization
from policies.limits import DEFAULT_LIMITS
from tests.support import ApiClient, Person

YAML = {"Content-Type": "application/yaml"}

LIMITS_YAML = """\
organization:
  limits:
    max_machines_per_user: 3
    max_concurrent_jobs_per_user: 4
    max_job_runtime: 3600     # seconds
    max_job_memory: 8192      # MB
  machine_types:
    cpu: {max_scale: 10, per_user_quota: 2}
    gpu: {max_scale: 4, per_user_quota: 1}
"""


def _setup(api: ApiClient) -> tuple[str, Person, Person, Person]:
    owner, admin, member = api.signup("owner"), api.signup("admin"), api.signup("member")
    slug = api.create_org(owner, "Settings Org")
    api.add_member(slug, owner, admin, role="admin")
    api.add_member(slug, owner, member)
    return slug, owner, admin, member


def _events(api: ApiClient, slug: str, action: str) -> list[AuditEvent]:
    with api.db.session() as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()
        return list(
            s.scalars(
                select(AuditEvent)
                .where(AuditEvent.org_id == org_id, AuditEvent.action == action)
                .order_by(AuditEvent.id)
            )
        )


def test_members_read_defaults_admins_write(api: ApiClient) -> None:
    slug, _, admin, member = _setup(api)
    r = api.get(f"/orgs/{slug}/settings", member)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "name": "Settings Org",
        "description": "",
        "version": 1,
        "invitations": {
            "who_may_invite": "admins",
            "default_expiry_hours": 168,
            "default_max_uses": 1,
        },
        "machines": {"approval_required": True, "offline_after_s": 60},
        "storage": {"max_bytes": None},
        "security": {"require_2fa": False},
        "projects": {"allow_personal": True},
        "sso": {"provider": None, "allowed_domains": [], "required": False},
        "limits": DEFAULT_LIMITS.model_dump(mode="json"),
        "members_without_2fa": None,
    }
    r = api.put(f"/orgs/{slug}/settings", member, json={"description": "mine now"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = api.put(f"/orgs/{slug}/settings", member, content=LIMITS_YAML, headers=YAML)
    assert r.status_code == 403
    assert api.get(f"/orgs/{slug}/settings/versions", member).status_code == 403
    assert api.get(f"/orgs/{slug}/settings/versions", admin).status_code == 200


def test_yaml_put_round_trips_and_is_versioned_and_audited(api: ApiClient) -> None:
    slug, _, admin, member = _setup(api)
    for content_type in ("application/yaml", "text/yaml", "application/x-yaml; charset=utf-8"):
        r = api.put(
            f"/orgs/{slug}/settings",
            admin,
            content=LIMITS_YAML,
            headers={"Content-Type": content_type},
        )
        assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 2  # the same document twice more is not a new version
    limits = body["limits"]["organization"]
    assert limits["limits"]["max_job_runtime"] == 3600
    assert limits["limits"]["max_queued_jobs_per_user"] == 500  # omitted: default
    assert limits["machine_types"] == {
        "cpu": {"max_scale": 10, "per_user_quota": 2},
        "gpu": {"max_scale": 4, "per_user_quota": 1},
    }
    assert api.get(f"/orgs/{slug}/settings", member).json() == body

    r = api.get(f"/orgs/{slug}/settings", member, headers={"Accept": "application/yaml"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(r.text) == body["limits"]

    versions = api.get(f"/orgs/{slug}/settings/versions", admin).json()
    assert versions["total"] == 2
    assert [v["version"] for v in versions["items"]] == [2, 1]
    assert versions["items"][0]["created_by"]["name"] == "admin"
    assert versions["items"][0]["settings"]["limits"] == body["limits"]
    assert versions["items"][1]["created_by"]["name"] == "owner"
    assert versions["items"][1]["settings"]["limits"] == DEFAULT_LIMITS.model_dump(mode="json")

    (event,) = _events(api, slug, "settings.updated")
    assert event.actor_name == "admin"
    assert event.before is not None and event.after is not None
    assert event.before["limits"] == DEFAULT_LIMITS.model_dump(mode="json")
    assert event.after["limits"] == body["limits"]


def test_json_put_changes_everything_in_one_version(api: ApiClient) -> None:
    slug, _, admin, member = _setup(api)
    change = {
        "name": "Renamed",
        "description": "Now with GPUs",
        "invitations": {"who_may_invite": "members"},
        "machines": {"approval_required": False},
        "limits": yaml.safe_load(LIMITS_YAML),
    }
    r = api.put(f"/orgs/{slug}/settings", admin, json=change)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "Renamed" and body["description"] == "Now with GPUs"
    assert body["version"] == 2
    # Sections merge key by key: the keys not given keep their values.
    assert body["invitations"] == {
        "who_may_invite": "members",
        "default_expiry_hours": 168,
        "default_max_uses": 1,
    }
    assert body["machines"] == {"approval_required": False, "offline_after_s": 60}
    assert body["limits"]["organization"]["limits"]["max_job_memory"] == 8192
    assert api.get(f"/orgs/{slug}", member).json()["name"] == "Renamed"
    assert len(_events(api, slug, "org.updated")) == 1
    assert len(_events(api, slug, "settings.updated")) == 1

    # Only the name: no new settings version.
    r = api.put(f"/orgs/{slug}/settings", admin, json={"name": "Renamed again"})
    assert r.status_code == 200 and r.json()["version"] == 2
    # An empty body changes nothing.
    r = api.put(f"/orgs/{slug}/settings", admin, json={})
    assert r.status_code == 200 and r.json()["version"] == 2
    assert len(_events(api, slug, "settings.updated")) == 1


def test_name_and_settings_are_one_transaction(api: ApiClient) -> None:
    """A valid new name with an invalid limit: neither is applied."""
    slug, _, admin, _ = _setup(api)
    r = api.put(
        f"/orgs/{slug}/settings",
        admin,
        json={
            "name": "Should not stick",
            "limits": {"organization": {"limits": {"max_job_runtime": -1}}},
        },
    )
    assert r.status_code == 422
    assert r.json()["field"] == "limits.organization.limits.max_job_runtime"
    body = api.get(f"/orgs/{slug}/settings", admin).json()
    assert body["name"] == "Settings Org" and body["version"] == 1
    assert _events(api, slug, "org.updated") == []


_BAD_YAML: list[Any] = [
    pytest.param("organization: [\n", None, "not valid YAML", id="yaml-syntax"),
    pytest.param(
        "organization:\n  limits:\n    max_jobz: 1\n",
        "organization.limits.max_jobz",
        "Unknown key 'max_jobz'",
        id="yaml-unknown-key",
    ),
    pytest.param(
        "organization:\n  limits:\n    max_job_runtime: -5\n",
        "organization.limits.max_job_runtime",
        "line 3",
        id="yaml-negative",
    ),
    pytest.param(
        "organization:\n  limits:\n    max_job_memory: 1000000000000\n",
        "organization.limits.max_job_memory",
        "at most",
        id="yaml-absurd",
    ),
    pytest.param(
        "organization:\n  limits:\n    max_job_runtime: '60'\n",
        "organization.limits.max_job_runtime",
        "integer",
        id="yaml-string-number",
    ),
    pytest.param(
        "organization:\n  limits: {}\n  limits: {}\n", None, "duplicate key", id="yaml-dup-key"
    ),
    pytest.param("", None, "empty", id="yaml-empty"),
    pytest.param("- a\n- b\n", None, "mapping", id="yaml-list"),
]


@pytest.mark.parametrize(("text", "field", "says"), _BAD_YAML)
def test_bad_yaml_is_422_naming_the_key(
    api: ApiClient, text: str, field: str | None, says: str
) -> None:
    slug, _, admin, _ = _setup(api)
    r = api.put(f"/orgs/{slug}/settings", admin, content=text, headers=YAML)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid"
    assert r.json().get("field") == field
    assert says in r.json()["detail"]
    assert api.get(f"/orgs/{slug}/settings", admin).json()["version"] == 1


_BAD_JSON: list[Any] = [
    pytest.param({"colour": "red"}, "colour", id="unknown-top-key"),
    pytest.param({"invitations": {"who": "all"}}, "invitations.who", id="unknown-section-key"),
    pytest.param(
        {"invitations": {"who_may_invite": "everyone"}},
        "invitations.who_may_invite",
        id="bad-choice",
    ),
    pytest.param({"machines": {"offline_after_s": -1}}, "machines.offline_after_s", id="negative"),
    pytest.param(
        {"invitations": {"default_expiry_hours": 10**9}},
        "invitations.default_expiry_hours",
        id="absurd",
    ),
    pytest.param(
        {"invitations": {"default_expiry_hours": "12"}},
        "invitations.default_expiry_hours",
        id="string-number",
    ),
    pytest.param(
        {"limits": {"organization": {"limits": {"max_concurrent_jobs_per_user": 10**30}}}},
        "limits.organization.limits.max_concurrent_jobs_per_user",
        id="limits-absurd",
    ),
    pytest.param(
        {"limits": {"organization": {"machine_types": {}}}},
        "limits.organization.machine_types",
        id="limits-no-types",
    ),
    pytest.param({"limits": {"oops": 1}}, "limits.oops", id="limits-unknown"),
    pytest.param({"machines": "off"}, "machines", id="section-not-mapping"),
    pytest.param({"name": ""}, "name", id="empty-name"),
    pytest.param({"name": "x" * 101}, "name", id="long-name"),
    pytest.param({"description": 7}, "description", id="description-type"),
]


@pytest.mark.parametrize(("body", "field"), _BAD_JSON)
def test_bad_json_is_422_naming_the_key(api: ApiClient, body: dict[str, Any], field: str) -> None:
    slug, _, admin, _ = _setup(api)
    r = api.put(f"/orgs/{slug}/settings", admin, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text
    assert field.split(".")[-1] in r.json()["detail"] or "must" in r.json()["detail"]
    after = api.get(f"/orgs/{slug}/settings", admin).json()
    assert after["version"] == 1 and after["name"] == "Settings Org"


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b"", b'"just a string"', b"\xff\xfe", b"[" * 100_00],
    ids=["syntax", "array", "empty", "string", "not-utf8", "deep"],
)
def test_unparseable_json_bodies(api: ApiClient, raw: bytes) -> None:
    slug, _, admin, _ = _setup(api)
    headers = {"Content-Type": "application/json"}
    r = api.put(f"/orgs/{slug}/settings", admin, content=raw, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "body", r.text


def test_body_size_and_media_type(api: ApiClient) -> None:
    slug, _, admin, _ = _setup(api)
    big = LIMITS_YAML + "# " + "x" * (64 * 1024) + "\n"
    r = api.put(f"/orgs/{slug}/settings", admin, content=big, headers=YAML)
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    # Without a Content-Length (chunked upload) the cap still holds.
    def chunks() -> Any:
        for _ in range(100):
            yield b"# " + b"x" * 1022 + b"\n"

    r = api.put(f"/orgs/{slug}/settings", admin, content=chunks(), headers=YAML)
    assert r.status_code == 413

    r = api.put(
        f"/orgs/{slug}/settings",
        admin,
        content=json.dumps({"description": "x"}),
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert api.get(f"/orgs/{slug}/settings", admin).json()["version"] == 1


def test_versions_pagination(api: ApiClient) -> None:
    slug, owner, _, _ = _setup(api)
    for hours in (10, 20, 30):
        r = api.put(
            f"/orgs/{slug}/settings", owner, json={"invitations": {"default_expiry_hours": hours}}
        )
        assert r.status_code == 200
    page = api.get(f"/orgs/{slug}/settings/versions", owner, params={"limit": 2, "offset": 1})
    body = page.json()
    assert body["total"] == 4 and body["limit"] == 2 and body["offset"] == 1
    assert [v["version"] for v in body["items"]] == [3, 2]
    assert [v["settings"]["invitations"]["default_expiry_hours"] for v in body["items"]] == [
        20,
        10,
    ]
