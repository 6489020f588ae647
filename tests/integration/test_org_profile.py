"""The organization's profile on both databases: the logo (checked by content, re-encoded,
served as image/png with nosniff; SVG, HTML disguised as PNG and > 1 MB refused), the
contact e-mail; members' own usage (`usage/me`, only the caller's); invitation defaults
(7 days, one use unless the creator or the org says otherwise)."""

from __future__ import annotations

import io
import json
import struct
import uuid
import zlib
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

import flows.models as fm
from api.cli.main import app as cli_app
from orgs.db import utcnow
from orgs.models import AuditEvent, Organization
from tests.support import ApiClient, Person, serve_in_thread

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_by_hand(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG written with zlib alone (no imaging library involved)."""
    raw = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_MAGIC
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def pillow_image(fmt: str, size: tuple[int, int] = (40, 20)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, format=fmt)
    return out.getvalue()


def _put_logo(api: ApiClient, who: Person, slug: str, data: bytes, ctype: str) -> Any:
    return api.put(f"/orgs/{slug}/logo", who, content=data, headers={"Content-Type": ctype})


def _org_world(api: ApiClient) -> tuple[Person, Person, str]:
    owner, ada = api.signup(), api.signup()
    slug = api.create_org(owner)
    api.add_member(slug, owner, ada)
    return owner, ada, slug


def test_logo_accepts_real_images_and_serves_png_with_nosniff(api: ApiClient) -> None:
    owner, ada, slug = _org_world(api)
    assert api.get(f"/orgs/{slug}/logo", ada).status_code == 204  # none yet
    r = _put_logo(api, owner, slug, png_by_hand(), "image/png")
    assert r.status_code == 200, r.text
    assert r.json()["width"] == 3 and r.json()["content_type"] == "image/png"

    got = api.get(f"/orgs/{slug}/logo", ada)
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in got.headers["content-security-policy"]
    with Image.open(io.BytesIO(got.content)) as img:
        assert img.format == "PNG" and img.size == (3, 2)
    # JPEG and WebP are re-encoded as PNG; a large one is scaled down to 512 px.
    for fmt, ctype in (("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        r = _put_logo(api, owner, slug, pillow_image(fmt, (1024, 256)), ctype)
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (512, 128)
        assert api.get(f"/orgs/{slug}/logo", ada).content.startswith(PNG_MAGIC)

    # Members may look, not change; outsiders do not see the org at all.
    assert _put_logo(api, ada, slug, png_by_hand(), "image/png").status_code == 403
    assert api.delete(f"/orgs/{slug}/logo", ada).status_code == 403
    outsider = api.signup()
    assert api.get(f"/orgs/{slug}/logo", outsider).status_code == 404
    assert api.get(f"/orgs/{slug}/logo").status_code == 401

    assert api.delete(f"/orgs/{slug}/logo", owner).status_code == 204
    assert api.get(f"/orgs/{slug}/logo", ada).status_code == 204
    assert api.delete(f"/orgs/{slug}/logo", owner).status_code == 204  # idempotent
    with api.db.session(write=False) as s:
        actions = list(
            s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("org.logo%")))
        )
    assert actions == ["org.logo_set"] * 3 + ["org.logo_removed"]


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>"
)
HTML_AS_PNG = PNG_MAGIC + b"<html><script>alert(document.cookie)</script></html>"


@pytest.mark.parametrize(
    ("data", "ctype", "status", "error"),
    [
        pytest.param(SVG, "image/svg+xml", 422, "unsupported_image", id="svg"),
        pytest.param(SVG, "image/png", 422, "unsupported_image", id="svg-declared-png"),
        pytest.param(HTML_AS_PNG, "image/png", 422, "unsupported_image", id="html-as-png"),
        pytest.param(b"<html></html>", "image/png", 422, "unsupported_image", id="html"),
        pytest.param(png_by_hand()[:40], "image/png", 422, "unsupported_image", id="truncated"),
        pytest.param(
            pillow_image("GIF"), "image/png", 422, "unsupported_image", id="gif-declared-png"
        ),
        pytest.param(b"", "image/png", 422, "unsupported_image", id="empty"),
    ],
)
def test_logo_refuses_what_is_not_a_png_jpeg_or_webp(
    api: ApiClient, data: bytes, ctype: str, status: int, error: str
) -> None:
    owner, ada, slug = _org_world(api)
    r = _put_logo(api, owner, slug, data, ctype)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["field"] == "logo"
    assert api.get(f"/orgs/{slug}/logo", ada).status_code == 204  # nothing stored


def test_logo_over_one_megabyte_is_refused(api: ApiClient) -> None:
    owner, _ada, slug = _org_world(api)
    big = png_by_hand() + b"\0" * (1 << 20)
    r = _put_logo(api, owner, slug, big, "image/png")
    assert r.status_code == 413 and r.json()["error"] == "logo_too_large"

    # Without a Content-Length (chunked), the server stops reading at the limit.
    def chunks() -> Any:
        for _ in range(20):
            yield b"\0" * 100_000

    r = api.put(
        f"/orgs/{slug}/logo", owner, content=chunks(), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 413 and r.json()["error"] == "logo_too_large"


def test_contact_email(api: ApiClient) -> None:
    owner, ada, slug = _org_world(api)
    r = api.patch(f"/orgs/{slug}", owner, json={"contact_email": "IT@Example.com"})
    assert r.status_code == 200 and r.json()["contact_email"] == "it@example.com"
    assert api.get(f"/orgs/{slug}", ada).json()["contact_email"] == "it@example.com"
    bad = api.patch(f"/orgs/{slug}", owner, json={"contact_email": "not an address"})
    assert bad.status_code == 422 and bad.json()["field"] == "contact_email"
    assert api.patch(f"/orgs/{slug}", ada, json={"contact_email": "x@y.org"}).status_code == 403
    # Another field alone leaves it; null clears it.
    r = api.patch(f"/orgs/{slug}", owner, json={"description": "d"})
    assert r.json()["contact_email"] == "it@example.com"
    assert (
        api.patch(f"/orgs/{slug}", owner, json={"contact_email": None}).json()["contact_email"]
        is None
    )
    with api.db.session(write=False) as s:
        changes = list(
            s.scalars(
                select(AuditEvent.after).where(AuditEvent.action == "org.contact_email_changed")
            )
        )
    assert changes == [{"contact_email": "it@example.com"}, {"contact_email": None}]


# --------------------------------------------------------------------------- own usage


def _job(s: Any, org_id: uuid.UUID, user: str, state: str, hours_ago: float, ran_h: float) -> None:
    created = utcnow() - timedelta(hours=hours_ago)
    started = created + timedelta(minutes=1)
    ended = started + timedelta(hours=ran_h) if state in ("completed", "failed") else None
    s.add(
        fm.Job(
            org_id=org_id,
            user_id=uuid.UUID(user),
            machine_type="cpu",
            state=state,
            memory_mb=1024,
            max_runtime_s=3600 * 8,
            created_at=created,
            updated_at=created,
            released_at=created,
            started_at=started if state != "held" else None,
            ended_at=ended,
        )
    )


def test_usage_me_shows_only_the_callers_numbers(api: ApiClient, tmp_path: Any) -> None:
    owner, ada, slug = _org_world(api)
    with api.db.transaction() as s:
        org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()
        _job(s, org_id, ada.id, "completed", 10, 2.0)
        _job(s, org_id, ada.id, "failed", 8, 1.0)
        _job(s, org_id, ada.id, "held", 1, 0)
        _job(s, org_id, owner.id, "completed", 5, 4.0)
    r = api.post(f"/orgs/{slug}/datasets", ada, json={"name": "ada-data"})
    assert r.status_code == 201, r.text
    r = api.post(
        f"/orgs/{slug}/datasets/ada-data/versions",
        ada,
        content=b"x" * 1000,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    api.post(f"/orgs/{slug}/datasets", owner, json={"name": "owner-data"})
    api.post(
        f"/orgs/{slug}/datasets/owner-data/versions",
        owner,
        content=b"y" * 5000,
        headers={"Content-Type": "application/octet-stream"},
    )

    me = api.get(f"/orgs/{slug}/usage/me", ada)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["name"] == ada.name and body["user_id"] == ada.id
    assert body["compute_hours"] == pytest.approx(3.0, abs=0.01)
    assert body["jobs_by_state"]["completed"] == 1 and body["jobs_by_state"]["failed"] == 1
    assert body["jobs_by_state"]["held"] == 1 and body["queued_now"] == 1
    assert sum(body["jobs_by_state"].values()) == 3
    assert body["storage_bytes"] == 1000
    # The owner's numbers are theirs; a member still may not read everyone's.
    theirs = api.get(f"/orgs/{slug}/usage/me", owner).json()
    assert theirs["compute_hours"] == pytest.approx(4.0, abs=0.01)
    assert theirs["storage_bytes"] == 5000
    assert api.get(f"/orgs/{slug}/usage", ada).status_code == 403
    assert api.get(f"/orgs/{slug}/usage/me", api.signup()).status_code == 404

    with serve_in_thread(api.client.app) as url:  # type: ignore[arg-type]
        env = {
            "CSHARE_API_URL": url.removesuffix("/api/v1"),
            "CSHARE_TOKEN": ada.token,
            "CSHARE_ORG": slug,
            "CSHARE_CONFIG": str(tmp_path / "c.toml"),
            "COLUMNS": "200",
        }
        runner = CliRunner()
        out = runner.invoke(cli_app, ["usage", "--me", "--json"], env=env)
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["storage_bytes"] == 1000
        out = runner.invoke(cli_app, ["usage", "--me"], env=env)
        assert out.exit_code == 0 and "3 h" in out.stdout and "completed" in out.stdout, out.output
        assert owner.name not in out.stdout
        out = runner.invoke(cli_app, ["usage"], env=env)  # everyone's: admins only
        assert out.exit_code != 0 and "admins" in out.output


# ------------------------------------------------------------------ invitation defaults


def test_invitations_default_to_seven_days_and_one_use(api: ApiClient) -> None:
    owner, _ada, slug = _org_world(api)
    r = api.post(f"/orgs/{slug}/invitations", owner, json={})
    assert r.status_code == 201, r.text
    inv = r.json()
    assert inv["max_uses"] == 1
    from datetime import datetime

    lifetime = datetime.fromisoformat(inv["expires_at"]) - utcnow()
    assert timedelta(days=7) - timedelta(minutes=5) < lifetime <= timedelta(days=7)
    # One person uses the link; the second is told it is used up.
    first, second = api.signup(), api.signup()
    assert api.post(f"/invitations/{inv['code']}/accept", first).status_code == 200
    used = api.post(f"/invitations/{inv['code']}/accept", second)
    assert used.status_code == 409 and used.json()["error"] == "invitation_used_up"
    # The creator may ask for unlimited (null) or a number.
    r = api.post(f"/orgs/{slug}/invitations", owner, json={"max_uses": None})
    assert r.json()["max_uses"] is None
    assert (
        api.post(f"/orgs/{slug}/invitations", owner, json={"max_uses": 5}).json()["max_uses"] == 5
    )
    # The org's admins may change the default.
    r = api.put(f"/orgs/{slug}/settings", owner, json={"invitations": {"default_max_uses": None}})
    assert r.status_code == 200, r.text
    assert api.post(f"/orgs/{slug}/invitations", owner, json={}).json()["max_uses"] is None


def test_invite_help_shows_the_defaults() -> None:
    r = CliRunner().invoke(cli_app, ["invite", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "expires after 7 days" in r.stdout and "serves 1 person" in r.stdout
