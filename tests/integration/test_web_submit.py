"""Submitting a job from the console (api/web/routes_submit.py): the parameter form
generated from the deployment's schema, errors beside the offending field, Explain
without creating anything, Submit through `flows.jobs.submit`, and who may use it."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select

from flows.models import Job
from tests.integration.test_web_pages import World, world

__all__ = ["world"]

SCHEMA: dict[str, Any] = {
    "title": "Parameters",
    "type": "object",
    "properties": {
        "epochs": {"title": "Epochs", "type": "integer", "position": 0, "minimum": 1},
        "lr": {"title": "Learning rate", "type": "number", "default": 0.01, "position": 1},
        "name": {
            "title": "Run name",
            "type": "string",
            "position": 2,
            "description": "Shown in the job list.",
        },
        "shuffle": {"title": "Shuffle", "type": "boolean", "default": True, "position": 3},
        "optimizer": {"allOf": [{"$ref": "#/definitions/Optimizer"}], "position": 4},
        "layers": {
            "title": "Layers",
            "type": "array",
            "items": {"type": "integer"},
            "position": 5,
        },
        "seed": {"anyOf": [{"type": "integer"}, {"type": "null"}], "position": 6},
    },
    "required": ["epochs", "optimizer"],
    "definitions": {"Optimizer": {"title": "Optimizer", "enum": ["adam", "sgd"]}},
}


def _deploy(world: World) -> None:
    owner = world.owner.person
    assert owner is not None
    r = world.api.post(
        f"/orgs/{world.slug}/deployments",
        owner,
        json={
            "name": "train",
            "entrypoint": "flows/library/train.py:train",
            "machine_type": "cpu",
            "parameters": {"name": "nightly"},
            "parameter_schema": SCHEMA,
        },
    )
    assert r.status_code in (200, 201), r.text


def _jobs(world: World) -> int:
    with world.db.session(write=False) as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def _form(**over: str) -> dict[str, str]:
    base = {
        "deployment": "train",
        "p.epochs": "3",
        "p.lr": "0.1",
        "p.name": "nightly",
        "p.shuffle": "true",
        "p.optimizer": "adam",
        "p.layers": "[64, 32]",
        "p.seed": "",
        "tags": "baseline, sweep",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _error_beside(html: str, dom_id: str) -> str:
    m = re.search(rf'id="{re.escape(dom_id)}-error"[^>]*>([^<]*)<', html)
    assert m, f"no error beside {dom_id}"
    return m.group(1)


def test_the_form_is_generated_from_the_schema_with_defaults(world: World) -> None:
    _deploy(world)
    r = world.member.get(f"/orgs/{world.slug}/jobs/new?deployment=train")
    assert r.status_code == 200, r.text
    html = r.text
    for dom_id in ("param-epochs", "param-lr", "param-name", "param-shuffle", "param-layers"):
        assert f'<label for="{dom_id}"' in html, dom_id
    assert 'id="param-epochs" name="p.epochs" value=""' in html
    assert 'value="0.01"' in html  # the flow's default
    assert 'value="nightly"' in html  # the deployment's default wins
    assert 'id="param-shuffle" name="p.shuffle" value="true" checked' in html
    assert '<select id="param-optimizer"' in html and ">sgd</option>" in html
    assert "Shown in the job list." in html
    assert "(required)" in html
    # The form is reached from the jobs page.
    assert (
        f'href="/orgs/{world.slug}/jobs/new"' in world.member.get(f"/orgs/{world.slug}/jobs").text
    )


def test_bad_values_are_shown_beside_their_field_and_nothing_is_created(world: World) -> None:
    _deploy(world)
    url = f"/orgs/{world.slug}/jobs/new"
    r = world.member.post(url, _form(**{"p.epochs": "three", "p.layers": "[1, ", "p.lr": "x"}))
    assert r.status_code == 422
    assert "whole number" in _error_beside(r.text, "param-epochs")
    assert "JSON" in _error_beside(r.text, "param-layers")
    assert "number" in _error_beside(r.text, "param-lr")
    assert 'value="three"' in r.text  # what was typed is shown again
    # Schema rules (minimum, item types) come from flows.deployments.validate_parameters.
    r = world.member.post(url, _form(**{"p.epochs": "0", "p.layers": '["a"]'}))
    assert r.status_code == 422
    assert "invalid" in _error_beside(r.text, "param-epochs")
    assert "invalid" in _error_beside(r.text, "param-layers")
    r = world.member.post(url, _form(**{"p.epochs": "", "p.optimizer": ""}))
    assert r.status_code == 422
    assert _error_beside(r.text, "param-epochs") == "Required."
    assert _error_beside(r.text, "param-optimizer") == "Required."
    r = world.member.post(url, _form(inputs="no-such-dataset"))
    assert r.status_code in (403, 404, 422)
    r = world.member.post(url, _form(max_runtime_min="soon"))
    assert r.status_code == 422 and "whole number" in _error_beside(r.text, "s-runtime")
    assert _jobs(world) == 0


def test_explain_shows_the_decision_and_submit_goes_to_the_job(world: World) -> None:
    _deploy(world)
    url = f"/orgs/{world.slug}/jobs/new"
    r = world.member.post(url, {**_form(), "action": "explain"})
    assert r.status_code == 200, r.text
    assert "Admission would:" in r.text and "role_may_submit" in r.text
    assert _jobs(world) == 0
    # Above the org's maximum: explained as a rejection by its rule, before submitting.
    r = world.member.post(url, {**_form(max_runtime_min="10000000"), "action": "explain"})
    assert r.status_code == 200 and "runtime_within_limit" in r.text and "reject" in r.text
    r = world.member.post(url, {**_form(), "action": "submit"})
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert re.search(r"/jobs/[0-9a-f-]{36}\?notice=submitted$", location)
    with world.db.session(write=False) as s:
        job = s.scalars(select(Job)).one()
        assert job.parameters == {
            "epochs": 3,
            "lr": 0.1,
            "name": "nightly",
            "shuffle": True,
            "optimizer": "adam",
            "layers": [64, 32],
        }
        assert job.tags == ["baseline", "sweep"]
    page = world.member.get(location)
    assert page.status_code == 200 and "Job submitted." in page.text


def test_who_may_open_and_post_the_form(world: World) -> None:
    _deploy(world)
    url = f"/orgs/{world.slug}/jobs/new"
    assert world.outsider.get(url).status_code == 404
    assert world.outsider.post(url, _form()).status_code == 404
    assert world.anonymous.get(url).status_code == 303  # to sign in
    assert world.member.post(url, _form(), token=False).status_code == 403  # no CSRF token
    assert _jobs(world) == 0
    r = world.member.post(url, _form(deployment="nope"))
    assert r.status_code == 422 and "Choose a deployment" in r.text


def test_projects_list_create_show_and_submit_from_a_project(world: World) -> None:
    owner = world.owner.person
    assert owner is not None
    base = f"/orgs/{world.slug}/projects"
    r = world.owner.post(base, {"name": "vision", "description": "Image models"})
    assert r.status_code == 303 and r.headers["location"].startswith(f"{base}/vision")
    r = world.api.post(
        f"/orgs/{world.slug}/deployments",
        owner,
        json={
            "name": "detect",
            "entrypoint": "flows/library/train.py:train",
            "project": "vision",
            "parameter_schema": SCHEMA,
        },
    )
    assert r.status_code == 201, r.text
    assert "vision" in world.member.get(base).text
    page = world.member.get(f"{base}/vision").text
    link = f"/orgs/{world.slug}/jobs/new?project=vision&amp;deployment=detect"
    assert link in page
    _deploy(world)  # "train", in the default project
    form = world.member.get(link.replace("&amp;", "&")).text
    assert 'id="param-epochs"' in form and '<option value="detect" selected>' in form
    # The project filter leaves other projects' deployments out.
    assert '<option value="train"' not in form
    assert '<option value="train"' in world.member.get(f"/orgs/{world.slug}/jobs/new").text
    assert world.outsider.get(f"{base}/vision").status_code == 404
