"""The user's own pages: personal API tokens (shown once, listed, revoked; the API's
two-factor recency rule) and the profile's account panel and job e-mail choice."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from sqlalchemy import update

from orgs import notifications
from orgs.db import utcnow
from orgs.models import ApiToken
from tests.integration.test_two_factor import Clock, bearer, clock, enrol
from tests.integration.test_web_pages import World, _browser, world

__all__ = ["clock", "world"]


def _new_token(html: str) -> str:
    found = re.search(r'id="new-token"[^>]*value="([^"]+)"', html)
    assert found, "no new token on the page"
    return found.group(1)


def test_tokens_are_shown_once_listed_and_revoked(world: World) -> None:
    member = world.member
    assert world.anonymous.get("/account/tokens").status_code == 303  # sign in first
    r = member.post("/account/tokens", {"name": "my-laptop-token", "expires_in_days": "30"})
    assert r.status_code == 200, r.text
    secret = _new_token(r.text)
    # It works on the API, as the member.
    me = world.api.get("/me", bearer(secret))
    assert me.status_code == 200 and me.json()["name"] == member.person.name  # type: ignore[union-attr]
    listing = member.get("/account/tokens").text
    assert "my-laptop-token" in listing and secret not in listing and secret[:8] in listing
    # Nobody else sees or revokes it.
    assert "my-laptop-token" not in world.admin.get("/account/tokens").text
    token_id = world.api.get("/me/tokens", bearer(secret)).json()["items"][0]["id"]
    assert world.admin.post(f"/account/tokens/{token_id}/revoke").status_code == 404
    assert member.post(f"/account/tokens/{token_id}/revoke", token=False).status_code == 403
    r = member.post(f"/account/tokens/{token_id}/revoke")
    assert r.status_code == 303 and "notice=token_revoked" in r.headers["location"]
    assert world.api.get("/me", bearer(secret)).status_code == 401
    r = member.post("/account/tokens", {"name": ""})
    assert r.status_code == 422 and 'id="tok-name-error"' in r.text


def test_with_two_factor_a_recent_code_is_needed(world: World, clock: Clock) -> None:
    e = enrol(world.api, clock)
    web = _browser(world.api.client.app, e.person)
    # The session confirmed enrolment just now: no code asked.
    assert 'id="tok-code"' not in web.get("/account/tokens").text
    assert web.post("/account/tokens", {"name": "ci"}).status_code == 200
    with world.db.transaction() as s:
        s.execute(
            update(ApiToken)
            .where(ApiToken.user_id == uuid.UUID(e.person.id), ApiToken.kind == "session")
            .values(second_factor_at=utcnow() - timedelta(minutes=11))
        )
    page = web.get("/account/tokens").text
    assert 'id="tok-code"' in page
    r = web.post("/account/tokens", {"name": "late"})
    assert r.status_code == 403 and 'id="tok-code-error"' in r.text and "new-token" not in r.text
    r = web.post("/account/tokens", {"name": "late", "code": "000000"})
    assert r.status_code == 422 and 'id="tok-code-error"' in r.text
    r = web.post("/account/tokens", {"name": "late", "code": e.code()})
    assert (
        r.status_code == 200 and world.api.get("/me", bearer(_new_token(r.text))).status_code == 200
    )


def test_profile_shows_the_account_and_saves_the_job_email_choice(world: World) -> None:
    member = world.member
    assert member.person is not None
    page = member.get("/account").text
    assert member.person.email in page and 'href="/account/tokens"' in page
    assert '<label for="job-email">' in page
    r = member.post("/account/notifications", {"job_email": "all"})
    assert r.status_code == 200 and "Job e-mail choice saved." in r.text
    with world.db.session(write=False) as s:
        assert notifications.job_email(s, uuid.UUID(member.person.id)) == "all"
    assert member.post("/account/notifications", {"job_email": "sometimes"}).status_code == 422
    assert (
        member.post("/account/notifications", {"job_email": "off"}, token=False).status_code == 403
    )
