"""Schema fuzzing: schemathesis against the app's own OpenAPI schema, signed in as an owner.

One test per operation of `create_app().openapi()`, so operations added later are fuzzed
without editing this file. Each gets a fresh organization (owner, admin, member, one
pending invitation) in a database shared by the module, on SQLite and on PostgreSQL,
with an in-memory Prefect; `{org}` is always that org's slug, and
path parameters that name a row (`{user_id}`, `{token_id}`, `{code}`, `invitations/{id}`)
are drawn from real rows as well as generated. Bounded and reproducible: `MAX_EXAMPLES`
positive cases per operation and backend (some with NUL bytes injected, which only
PostgreSQL refuses to store), plus `NEGATIVE_EXAMPLES` schema-invalid ones on SQLite
(refused before any query, so one backend is enough), derandomized.

Checks: no 5xx, the response conforms to the documented schema, and its status code is
documented (every router shares the error responses declared in `api/app.py`).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from api.app import create_app
from flows.gateway import PrefectGateway
from orgs import accounts, organizations
from orgs.config import get_settings
from orgs.db import Database
from orgs.models import Invitation, Membership
from policies.permissions import Role
from tests.integration.test_jobs_support import FakePrefect
from tests.support import password_for

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
MAX_EXAMPLES = 15
NEGATIVE_EXAMPLES = 5
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
_PARAM_RE = re.compile(r"\{(\w+)\}")


def _openapi_for_collection() -> dict[str, Any]:
    """The app's schema, read once to name the tests (its database is never opened)."""
    db = Database(f"sqlite:///{Path(tempfile.gettempdir()) / 'cshare-fuzz-unused.db'}")
    try:
        schema: dict[str, Any] = create_app(get_settings(), db).openapi()
        return schema
    finally:
        db.dispose()


OPERATIONS = [
    (method.upper(), path)
    for path, item in _openapi_for_collection()["paths"].items()
    for method in item
    if method in HTTP_METHODS
]


@dataclass
class FuzzApp:
    app: FastAPI
    db: Database
    client: TestClient  # no lifespan: schemathesis' ASGI client runs it once
    schema: Any  # schemathesis.specs.openapi.schemas.OpenApiSchema
    backend: str


class FuzzPrefect(FakePrefect):
    """The job tests' in-memory Prefect (plus the schedule calls it lacks): the fuzzing is
    about the API's handling of input, not about reaching a Prefect server."""

    def set_deployment_schedule_active(
        self, deployment_id: uuid.UUID, schedule_id: uuid.UUID, active: bool
    ) -> None:
        return None

    def delete_deployment_schedule(self, deployment_id: uuid.UUID, schedule_id: uuid.UUID) -> None:
        return None


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fuzz_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzApp]:
    """The app on each backend; PostgreSQL is where stray input (NUL bytes) hurts most."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("fuzz") / "cshare.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        db = Database(f"sqlite:///{path}")
    else:  # this worker's migrated database; the worlds use unique names
        db = Database(request.getfixturevalue("pg_server_url"))
    app = create_app(get_settings(), db, cast(PrefectGateway, FuzzPrefect()))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    client = TestClient(app, raise_server_exceptions=False)
    yield FuzzApp(app=app, db=db, client=client, schema=schema, backend=request.param)
    db.dispose()


@dataclass
class World:
    org_slug: str
    owner_token: str
    # path parameter key ("{user_id}" or "invitations/{id}") -> real values
    real: dict[str, list[str]]


def build_world(fa: FuzzApp) -> World:
    tag = uuid.uuid4().hex[:8]
    users = {}
    tokens = {}
    with fa.db.session() as s:
        for role in Role:
            name = f"fz-{role.value}-{tag}"
            user, issued = accounts.signup(
                s, email=f"{name}@example.test", name=name, password=password_for(name)
            )
            users[role], tokens[role] = user, issued.token
        org = organizations.create(
            s, users[Role.owner], name=f"Fuzz {tag}", slug=None, description=None
        )
        for role in (Role.admin, Role.member):
            s.add(Membership(org_id=org.id, user_id=users[role].id, role=role.value))
        s.commit()
        personal = accounts.create_personal_token(
            s, users[Role.owner], name="fuzz", expires_in_days=1
        )
        slug, org_id, token_id = org.slug, org.id, str(personal.record.id)
    auth = {"Authorization": f"Bearer {tokens[Role.owner]}"}
    real: dict[str, list[str]] = {
        "{user_id}": [str(users[Role.member].id), str(users[Role.admin].id)],
        "{token_id}": [token_id],
    }
    r = fa.client.post(f"/api/v1/orgs/{slug}/invitations", headers=auth, json={})
    if r.status_code == 201:
        real["{code}"] = [r.json()["code"]]
        with fa.db.session() as s:
            ids = s.scalars(select(Invitation.id).where(Invitation.org_id == org_id)).all()
        real["invitations/{id}"] = [str(i) for i in ids]
    return World(org_slug=slug, owner_token=tokens[Role.owner], real=real)


def _real_values(world: World, path: str) -> dict[str, list[str]]:
    """Path parameter name -> real values for this path (besides `org`)."""
    found: dict[str, list[str]] = {}
    for match in _PARAM_RE.finditer(path):
        name = match.group(1)
        before = path[: match.start()].rstrip("/").rsplit("/", 1)[-1]
        for key in (f"{before}/{{{name}}}", f"{{{name}}}"):
            if key in world.real:
                found[name] = world.real[key]
                break
    return found


def _nul(value: Any) -> Any:
    """Every string in `value` with a NUL byte appended (a classic for PostgreSQL)."""
    if isinstance(value, str):
        return value + "\x00"
    if isinstance(value, dict):
        return {k: _nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nul(v) for v in value]
    return value


def with_nul_input(case: Any) -> Any:
    """The case with NUL bytes in its body, query and path parameters other than `org`."""
    if isinstance(case.body, dict | list | str):
        case.body = _nul(case.body)
    if case.query:
        case.query = _nul(dict(case.query))
    if case.path_parameters:
        case.path_parameters = {
            k: v if k == "org" else _nul(v) for k, v in case.path_parameters.items()
        }
    return case


def with_nul_org(case: Any) -> Any:
    case.path_parameters = {**case.path_parameters, "org": case.path_parameters["org"] + "\x00"}
    return case


def strategy_for(operation: Any, world: World, auth: dict[str, str]) -> st.SearchStrategy[Any]:
    """Valid cases on real rows, generated ones, and the same with NUL bytes injected."""
    names = set(_PARAM_RE.findall(operation.path))
    fixed: dict[str, Any] = {"org": world.org_slug} if "org" in names else {}
    real = _real_values(world, operation.path)
    choices = [fixed] + [
        {**fixed, **dict(zip(real, combo, strict=True))}
        for combo in itertools.product(*real.values())
    ]
    cases = [operation.as_strategy(path_parameters=p or None, headers=auth) for p in choices]
    hostile = [cases[0].map(with_nul_input)]
    if fixed:
        hostile.append(cases[0].map(with_nul_org))
    return st.one_of(cases + hostile)


def run_examples(
    strategy: st.SearchStrategy[Any], examples: int, call: Callable[[Any], None]
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        call(case)

    run()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms_to_its_schema(fuzz_app: FuzzApp, method: str, path: str) -> None:
    world = build_world(fuzz_app)
    auth = {"Authorization": f"Bearer {world.owner_token}"}
    operation = fuzz_app.schema[path][method]

    def call(case: Any) -> None:
        response = case.call(headers=auth)
        checks = CHECKS
        if response.status_code == 503 and "503" in case.operation.responses.status_codes:
            # A documented "dependency down" (GET /readyz without Prefect here) is an
            # answer, not a crash; its body and status are still checked.
            checks = [c for c in CHECKS if c is not not_a_server_error]
        case.validate_response(response, checks=checks, headers=auth)

    run_examples(strategy_for(operation, world, auth), MAX_EXAMPLES, call)
    if fuzz_app.backend != "sqlite":
        return  # schema-invalid input is refused before any query: once is enough
    fixed = {"org": world.org_slug} if "{org}" in path else None
    negative = operation.as_strategy(
        schemathesis.GenerationMode.NEGATIVE, path_parameters=fixed, headers=auth
    )
    # Unsatisfiable: nothing to make invalid (no body, no query, only the fixed {org}).
    with contextlib.suppress(Unsatisfiable):
        run_examples(negative, NEGATIVE_EXAMPLES, call)


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 10, OPERATIONS


def test_nul_characters_are_refused_not_a_server_error(fuzz_app: FuzzApp) -> None:
    """What the fuzzing found on PostgreSQL (500s): a NUL in a body, a path or a query."""
    world = build_world(fuzz_app)
    auth = {"Authorization": f"Bearer {world.owner_token}"}
    org = f"/api/v1/orgs/{world.org_slug}"
    for method, url, body in (
        ("POST", "/api/v1/orgs", {"name": "Nul", "description": "a\x00b"}),
        ("PATCH", org, {"description": "a\x00b"}),
        ("POST", "/api/v1/me/tokens", {"name": "a\x00b"}),
        ("GET", f"{org}%00", None),
        ("GET", f"{org}/audit?actor=a%00b", None),
    ):
        r = fuzz_app.client.request(method, url, headers=auth, json=body)
        assert r.status_code == 422, (method, url, r.status_code, r.text)
        assert r.json()["error"] == "nul_character", r.text
