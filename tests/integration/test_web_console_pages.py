"""Console polish: the limits editor's human labels and help, audit targets as names
linked to their pages (never another organization's), and the org switcher's full
names."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from flows.models import Project
from orgs import audit
from tests.integration.test_web_pages import World, world

__all__ = ["world"]


def test_limits_have_labels_and_help(world: World) -> None:
    html = world.owner.get(f"/orgs/{world.slug}/settings").text
    assert '<label for="lim-max_job_runtime">Longest job runtime (seconds)' in html
    assert 'aria-describedby="lim-max_job_runtime-hint"' in html
    assert "a job asking for nothing gets this much" in html
    assert "Running at once, per member" in html and "<code>per_user_quota</code>" in html


def test_audit_targets_are_names_with_links_within_the_org(world: World) -> None:
    owner, outsider = world.owner.person, world.outsider.person
    assert owner is not None and outsider is not None
    r = world.owner.post(f"/orgs/{world.slug}/projects", {"name": "vision"})
    assert r.status_code == 303
    # A project of another organization: an id from there must not resolve here.
    other_slug = world.api.create_org(outsider, name="Elsewhere")
    r = world.api.post(f"/orgs/{other_slug}/projects", outsider, json={"name": "secretproj"})
    assert r.status_code == 201, r.text
    org = world.org()
    assert org is not None
    with world.db.transaction() as s:
        foreign = s.scalars(select(Project).where(Project.name == "secretproj")).one()
        audit.record(
            s,
            org_id=org.id,
            actor=None,
            action="project.test",
            target_type="project",
            target_id=foreign.id,
        )
        foreign_id = str(foreign.id)
    html = world.admin.get(f"/orgs/{world.slug}/audit").text
    assert f'href="/orgs/{world.slug}/projects/vision"' in html and ">project vision</a>" in html
    assert "secretproj" not in html and f"project {foreign_id[:8]}" in html
    assert world.member.get(f"/orgs/{world.slug}/audit").status_code == 403
    assert world.outsider.get(f"/orgs/{world.slug}/audit").status_code == 404


def test_the_switcher_lists_full_names(world: World) -> None:
    owner, member = world.owner.person, world.member.person
    assert owner is not None and member is not None
    long_name = f"Institute for Very Long Organization Names {uuid.uuid4().hex[:4]}"
    slug = world.api.create_org(owner, name=long_name)
    world.api.add_member(slug, owner, member)
    html = world.member.get(f"/orgs/{world.slug}").text
    assert f'<a href="/orgs/{slug}">{long_name}</a> <span class="muted">member</span>' in html
    assert f'<a href="/orgs/{world.slug}" aria-current="true">' in html


def test_registries_page_is_write_only_and_for_admins(world: World) -> None:
    base = f"/orgs/{world.slug}/registries"
    assert world.member.get(base).status_code == 403
    assert world.outsider.get(base).status_code == 404
    form = {"registry": "ghcr.io/acme-ml", "username": "robot", "password": "hunter2-secret"}
    assert world.member.post(base, form).status_code == 403
    assert world.admin.post(base, form, token=False).status_code == 403
    r = world.admin.post(base, form)
    assert r.status_code == 303 and "notice=registry_added" in r.headers["location"]
    page = world.admin.get(base).text
    assert "ghcr.io/acme-ml" in page and "robot" in page and "hunter2-secret" not in page
    assert f'href="/orgs/{world.slug}/registries"' in page  # in the admins' nav
    assert (
        f'href="/orgs/{world.slug}/registries"' not in world.member.get(f"/orgs/{world.slug}").text
    )
    r = world.admin.post(base, {**form, "registry": "https://not a prefix"})
    assert r.status_code == 422 and 'id="reg-registry-error"' in r.text
    assert "hunter2-secret" not in r.text
    listed = world.api.get(f"/orgs/{world.slug}/registries", world.admin.person)
    key = listed.json()[0]["id"]
    assert world.member.post(f"{base}/{key}/delete").status_code == 403
    r = world.admin.post(f"{base}/{key}/delete")
    assert r.status_code == 303 and "notice=registry_removed" in r.headers["location"]
    assert "ghcr.io/acme-ml" not in world.admin.get(base).text
