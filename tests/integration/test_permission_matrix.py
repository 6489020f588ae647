"""Every API route and every web console route x every role, generated from the app's
routes and the permission table.

Nothing here lists routes by hand except the few public ones: the cases come from
`create_app().routes` (and the console's app mounted in it) and
`policies.permissions.ROLE_PERMISSIONS`, so a route added later is covered without
editing this file, and a route that cannot be classified fails:

- an API route with an `{org}` path parameter must depend on exactly one `Requires(...)`
  (a `JobOnly(...)` one is for the job's own token: every member token gets 403);
- any other API route either depends on the signed-in user (`get_auth`/`get_current_user`),
  on a machine token (`get_machine`: every user token gets 401), or is on `PUBLIC_ROUTES`;
- a console route with `{org}` must depend on exactly one `PageRequires(...)` (the
  console's `Requires`, for cookie sessions); any other console route on the signed-in
  viewer (`require_viewer`), or is on `PUBLIC_PAGES`.

For every (route, role) a fresh world is built directly through the services (an org
with an owner, an admin and a member, plus an outsider who owns another org; unique
names, so cases sharing the module's database and app never see each other, and
destructive routes cannot break later cases), the path is filled from `PATH_EXAMPLES`
(real rows where the parameter names one), the body from `BODY_EXAMPLES` (else `{}`),
and the answer must be:

- anonymous -> 401 on every route that is not public (and everyone on agent routes);
- non_member (signed in, member of another org) -> 404 on every org route;
- a member whose role lacks the route's permission -> 403 (every member on `JobOnly`
  routes: only a job writes its lineage; tests/integration/test_job_credentials.py has
  the job's side);
- a role that has it (and everyone on authenticated/public routes) -> not 401/403/404,
  and no server error.

The console is asked as a browser would: the session cookie, the CSRF token in every
form (anonymous visitors get the double-submit cookie, so the answer is about signing
in, not CSRF), form bodies from `FORM_EXAMPLES`. There the answers are:

- anonymous -> 303 to `/login?next=...` (every page that is not public);
- non_member -> the 404 page, without the organization's name;
- a member whose role lacks the page's permission -> the 403 page;
- a role that has it -> 200, 201 or 303 (not to the sign-in page), except the few
  (page, role) pairs in `PAGE_OUTCOMES`, each with its reason.

The world grants every *conditional* permission (e.g. members may invite), so a 403 for
a role that holds the permission is a bug in the route, not in the setting.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import fastapi.routing
import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi import Path as PathParam
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import deps
from api.app import API_PREFIX, create_app
from api.deps import Requires
from api.job_credentials import JobOnly
from api.web import csrf
from api.web import session as web_session
from api.web.app import PagesMount
from api.web.core import OrgPage, PageRequires, org_page
from datasets import bundle_format
from orgs import accounts, join_requests, organizations, registries, secrets, teams
from orgs.config import get_settings
from orgs.context import member_context
from orgs.db import Database
from orgs.models import FormerMember, Invitation, JoinRequest, Membership, Organization, User
from orgs.sso_config import SsoProvider
from policies.permissions import ROLE_PERMISSIONS, Permission, Role
from tests.integration.test_jobs_support import FakePrefect, jobs_app
from tests.support import ApiClient, Person, password_for

ROLES = ("owner", "admin", "member", "non_member", "anonymous")
MEMBER_ROLES: dict[str, Role] = {"owner": Role.owner, "admin": Role.admin, "member": Role.member}

# Routes anyone may call without a token. A new public route must be added here on
# purpose; one that is neither listed nor authenticated fails `test_every_route_is_classified`.
PUBLIC_ROUTES = frozenset(
    {
        "POST /auth/signup",
        "POST /auth/login",
        "POST /auth/login/2fa",  # the sign-in ticket is the credential
        # Signing in through a provider (api/routers/sso.py).
        "GET /auth/sso/providers",
        "POST /auth/sso/{provider}/start",
        "POST /auth/sso/poll",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",  # its own bearer token (CSHARE_METRICS_TOKEN), never a user's
    }
)

# Depending on any of these (directly or through another dependency) means "signed in".
AUTH_DEPENDENCIES: tuple[Callable[..., Any], ...] = (deps.get_auth, deps.get_current_user)
# Agent routes take a machine token: every user token (and none) gets 401 there.
MACHINE_DEPENDENCIES: tuple[Callable[..., Any], ...] = (deps.get_machine,)

# Console pages anyone may open signed out (they decide themselves what a visitor sees).
PUBLIC_PAGES = frozenset(
    {
        "GET /",
        "GET /switch",
        "GET /login",
        "POST /login",
        "POST /login/2fa",  # the sign-in ticket is the credential
        "GET /signup",
        "POST /signup",
        "POST /logout",
        "GET /invitations/{code}",  # redirects to sign in, then back
        # Signing in through a provider (api/web/routes_sso.py).
        "GET /sso/{provider}/start",
        "GET /sso/{provider}/callback",
        "GET /sso/link",
        "POST /sso/link",
        "GET /sso/approve",
        "POST /sso/approve",
    }
)
# Depending on this means "a signed-in viewer" (anonymous visitors are sent to /login).
VIEWER_DEPENDENCIES: tuple[Callable[..., Any], ...] = (web_session.require_viewer,)

Kind = Literal["org", "job", "authenticated", "machine", "public", "invalid"]
Surface = Literal["api", "console"]
_PARAM_RE = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class RouteRule:
    """What the matrix knows about one (method, path) of the app."""

    method: str
    path: str  # as routed, with the /api/v1 prefix
    label: str  # "DELETE /orgs/{org}", the prefix dropped
    kind: Kind
    permission: Permission | None = None
    problem: str | None = None
    has_body: bool = False
    surface: Surface = "api"

    @property
    def test_id(self) -> str:
        """The label, marked when the route lives outside /api/v1 (probes are at both)."""
        if self.surface == "console":
            return f"console {self.label}"
        inside = self.path.startswith(API_PREFIX + "/")
        return self.label if inside else f"{self.label} (root)"


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _walk(sub)


def _label(method: str, path: str) -> str:
    shown = path[len(API_PREFIX) :] if path.startswith(API_PREFIX + "/") else path
    return f"{method} {shown}"


def path_params(path: str) -> list[str]:
    return _PARAM_RE.findall(path)


def classify(path: str, method: str, dependant: Dependant) -> RouteRule:
    """Classify one method of a route; a route that breaks the rules gets a `problem`."""
    label = _label(method, path)
    tree = [dependant, *_walk(dependant)]
    calls = [d.call for d in tree]
    rules = [c for c in calls if isinstance(c, Requires)]
    authenticated = any(c in AUTH_DEPENDENCIES for c in calls)
    has_body = any(d.body_params for d in tree)

    def rule(kind: Kind, permission: Permission | None = None, problem: str = "") -> RouteRule:
        return RouteRule(method, path, label, kind, permission, problem or None, has_body)

    if "org" in path_params(path):
        if any(isinstance(r, PageRequires) for r in rules):
            return rule("invalid", problem=f"{label}: PageRequires is for console pages.")
        if len(rules) != 1:
            found = ", ".join(repr(r) for r in rules) or "none"
            return rule(
                "invalid",
                problem=(
                    f"{label}: a route inside an organization needs exactly one permission "
                    f"rule, found {found}; add a Requires(Permission.<x>) dependency "
                    "(api.deps.Requires)."
                ),
            )
        return rule("job" if isinstance(rules[0], JobOnly) else "org", rules[0].permission)
    if rules:
        return rule(
            "invalid",
            problem=f"{label}: has {rules[0]!r} but no {{org}} path parameter to apply it to.",
        )
    if label in PUBLIC_ROUTES:
        if authenticated:
            return rule(
                "invalid",
                problem=f"{label}: listed in PUBLIC_ROUTES but requires a signed-in user.",
            )
        return rule("public")
    if authenticated:
        return rule("authenticated")
    if any(c in MACHINE_DEPENDENCIES for c in calls):
        return rule("machine")
    return rule(
        "invalid",
        problem=(
            f"{label}: neither authenticated nor known to be public; depend on "
            "api.deps.CurrentUser/AuthDep (or Requires(...) under /orgs/{org}), or add it "
            "to PUBLIC_ROUTES in this file if anyone may call it."
        ),
    )


def api_routes(app: FastAPI) -> Iterator[tuple[str, set[str], Dependant]]:
    """(path, methods, dependant) of every APIRoute, included routers resolved."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is None:  # FastAPI < 0.150 copies included routes into app.routes
        for route in app.routes:
            if isinstance(route, APIRoute):
                yield route.path, set(route.methods or ()), route.dependant
        return
    for ctx in iter_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute):
            yield str(ctx.path), set(ctx.methods or ()), ctx.dependant


def route_rules(app: FastAPI) -> list[RouteRule]:
    return [
        classify(path, method, dependant)
        for path, methods, dependant in api_routes(app)
        for method in sorted(methods - {"HEAD"})
    ]


def classify_page(path: str, method: str, dependant: Dependant) -> RouteRule:
    """Classify one method of a console route, as `classify` does for the API."""
    label = f"{method} {path}"
    calls = [d.call for d in (dependant, *_walk(dependant))]
    rules = [c for c in calls if isinstance(c, Requires)]
    signed_in = any(c in VIEWER_DEPENDENCIES for c in calls)

    def rule(kind: Kind, permission: Permission | None = None, problem: str = "") -> RouteRule:
        return RouteRule(method, path, label, kind, permission, problem or None, surface="console")

    if "org" in path_params(path):
        pages = [r for r in rules if isinstance(r, PageRequires)]
        if len(pages) != 1 or len(rules) != 1:
            found = ", ".join(repr(r) for r in rules) or "none"
            return rule(
                "invalid",
                problem=(
                    f"console {label}: a page inside an organization needs exactly one "
                    f"permission rule, found {found}; declare the page as "
                    "`page: Annotated[OrgPage, Depends(PageRequires(Permission.<x>))]` "
                    "(api.web.core.PageRequires)."
                ),
            )
        return rule("org", pages[0].permission)
    if rules:
        return rule(
            "invalid",
            problem=f"console {label}: has {rules[0]!r} but no {{org}} path parameter.",
        )
    if label in PUBLIC_PAGES:
        if signed_in:
            return rule(
                "invalid", problem=f"console {label}: in PUBLIC_PAGES but requires a viewer."
            )
        return rule("public")
    if signed_in:
        return rule("authenticated")
    return rule(
        "invalid",
        problem=(
            f"console {label}: neither signed in nor known to be public; depend on "
            "api.web.session.ViewerDep (or PageRequires(...) under /orgs/{org}), or add it "
            "to PUBLIC_PAGES in this file if anyone may open it."
        ),
    )


def console_app(app: FastAPI) -> FastAPI:
    """The console's own FastAPI app, mounted at / behind the API routes."""
    for route in app.router.routes:
        if isinstance(route, PagesMount):
            pages = route.app
            assert isinstance(pages, FastAPI)
            return pages
    raise AssertionError("the app has no web console mounted")


def page_rules(app: FastAPI) -> list[RouteRule]:
    return [
        classify_page(path, method, dependant)
        for path, methods, dependant in api_routes(console_app(app))
        for method in sorted(methods - {"HEAD"})
    ]


def _app_for_collection() -> FastAPI:
    """The app, built only to read its routes (its database is never opened)."""
    db = Database(f"sqlite:///{Path(tempfile.gettempdir()) / 'cshare-routes-unused.db'}")
    try:
        return create_app(get_settings(), db)
    finally:
        db.dispose()


_COLLECTED = _app_for_collection()
RULES = route_rules(_COLLECTED)
PAGE_RULES = page_rules(_COLLECTED)


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """One organization with an owner, an admin and a member; an outsider in another org."""

    api: ApiClient
    org_slug: str
    org_name: str
    org_id: uuid.UUID
    people: dict[str, Person]
    other_org_slug: str
    cache: dict[str, str] = field(default_factory=dict)

    def caller(self, role: str) -> Person | None:
        return self.people.get(role)

    def acting(self, role: str) -> Person:
        """Who makes the org rows an example uses: the caller if in the org, else the member."""
        return self.people[role] if role in MEMBER_ROLES else self.people["member"]

    def own(self, role: str) -> Person:
        """Whose account rows (tokens) an example uses: the caller's, or the member's."""
        return self.people.get(role) or self.people["member"]

    def user(self, session: Session, person: Person) -> User:
        user = session.get(User, uuid.UUID(person.id))
        assert user is not None
        return user


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def build_world(api: ApiClient) -> World:
    people: dict[str, Person] = {}
    users: dict[str, User] = {}
    with api.db.session() as s:
        for role in ("owner", "admin", "member", "non_member"):
            name = _unique(role.replace("_", "-"))
            email = f"{name}@example.test"
            user, issued = accounts.signup(s, email=email, name=name, password=password_for(name))
            people[role] = Person(id=str(user.id), name=name, email=email, token=issued.token)
            users[role] = user
        org_name = f"Matrix {uuid.uuid4().hex[:8]}"
        org = organizations.create(s, users["owner"], name=org_name, slug=None, description=None)
        other = organizations.create(
            s, users["non_member"], name=_unique("Elsewhere"), slug=None, description=None
        )
        for role in ("admin", "member"):
            s.add(Membership(org_id=org.id, user_id=users[role].id, role=MEMBER_ROLES[role].value))
        # Grant the conditional permissions (see the module docstring).
        settings = dict(org.settings or {})
        if isinstance(settings.get("invitations"), dict):
            settings["invitations"] = {**settings["invitations"], "who_may_invite": "members"}
            org.settings = settings
        s.commit()
        return World(
            api=api,
            org_slug=org.slug,
            org_name=org.name,
            org_id=org.id,
            people=people,
            other_org_slug=other.slug,
        )


# ------------------------------------------------------------- examples for the requests


def _created(r: httpx.Response, what: str) -> dict[str, Any]:
    if r.status_code not in (200, 201):
        pytest.fail(f"could not create {what} for a path example: {r.status_code} {r.text}")
    body: dict[str, Any] = r.json()
    return body


def _personal_token(w: World, role: str) -> str:
    with w.api.db.session() as s:
        issued = accounts.create_personal_token(
            s, w.user(s, w.own(role)), name="matrix", expires_in_days=1
        )
        return str(issued.record.id)


def _invitation(w: World) -> tuple[str, str]:
    """(code, id) of a fresh invitation to the world's org, made by its owner."""
    if "invitation" not in w.cache:
        r = w.api.post(
            f"/orgs/{w.org_slug}/invitations", w.people["owner"], json={"role": "member"}
        )
        body = _created(r, "an invitation")
        inv_id = body.get("id") or body.get("invitation", {}).get("id")
        if inv_id is None:
            with w.api.db.session() as s:
                inv_id = s.scalars(
                    select(Invitation.id)
                    .where(Invitation.org_id == w.org_id)
                    .order_by(Invitation.created_at.desc())
                ).first()
        w.cache["invitation"] = f"{body['code']}\n{inv_id}"
    code, inv_id = w.cache["invitation"].split("\n")
    return code, inv_id


def _machine(w: World, role: str) -> str:
    r = w.api.post(
        f"/orgs/{w.org_slug}/machines",
        w.acting(role),
        json={"name": _unique("m"), "machine_type": "cpu", "hardware": {}, "slots": 1},
    )
    body = _created(r, "a machine")
    return str(body["machine"]["id"] if "machine" in body else body["id"])


def _dataset(w: World, role: str) -> str:
    name = _unique("ds")
    owner = w.acting(role)
    _created(w.api.post(f"/orgs/{w.org_slug}/datasets", owner, json={"name": name}), "a dataset")
    w.cache["dataset"] = f"{name}\n{role}"
    return name


def _dataset_version(w: World, role: str) -> str:
    """Version 1 of the dataset `_dataset` just made (the path names both)."""
    name, made_for = w.cache["dataset"].split("\n")
    owner = w.acting(made_for) if made_for in MEMBER_ROLES else w.people["member"]
    r = w.api.post(
        f"/orgs/{w.org_slug}/datasets/{name}/versions",
        owner,
        content=b"matrix bytes",
        headers={"Content-Type": "application/octet-stream"},
    )
    return str(_created(r, "a dataset version")["version"])


def _bundle(w: World, role: str | None = None) -> str:
    """The digest of a code bundle the owner uploaded (the world's deployments ship it)."""
    if "bundle" not in w.cache:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "flow.py").write_text(f"# {uuid.uuid4()}\n")
            out = io.BytesIO()
            packed = bundle_format.pack(Path(tmp), ["flow.py"], out)
        r = w.api.put(
            f"/orgs/{w.org_slug}/bundles/{packed.digest}",
            w.people["owner"],
            content=out.getvalue(),
            headers={"Content-Type": bundle_format.MEDIA_TYPE},
        )
        w.cache["bundle"] = str(_created(r, "a code bundle")["digest"])
    return w.cache["bundle"]


def _deployment(w: World, role: str | None = None) -> str:
    """A deployment registered by `role`'s acting person, or the owner's shared one."""
    if role is None and "deployment" in w.cache:
        return w.cache["deployment"]
    who = w.people["owner"] if role is None else w.acting(role)
    name = _unique("deploy")
    body: dict[str, Any] = {
        "name": name,
        "entrypoint": "flows/library/train.py:train",
        "machine_type": "cpu",
        # Shipped as a bundle, so a job's code (GET .../jobs/{id}/code) is there to read.
        "code": {"kind": "bundle", "digest": _bundle(w)},
    }
    _created(w.api.post(f"/orgs/{w.org_slug}/deployments", who, json=body), "a deployment")
    if role is None:
        w.cache["deployment"] = name
    return name


def _project(w: World, role: str) -> str:
    """A project created by the caller (members manage their own), with a deploy key and
    a Git token (so their GET and DELETE routes find one)."""
    name = _unique("proj").lower()
    r = w.api.post(f"/orgs/{w.org_slug}/projects", w.acting(role), json={"name": name})
    name = str(_created(r, "a project")["name"])
    base = f"/orgs/{w.org_slug}/projects/{name}"
    _created(w.api.post(f"{base}/deploy-key", w.acting(role), json={}), "a deploy key")
    r = w.api.put(f"{base}/git-token", w.acting(role), json={"token": "matrix-token"})
    assert r.status_code == 200, r.text
    return name


def _scaled_type(w: World, role: str) -> str:
    """The machine type `cpu` with a capacity provider attached by the owner (the scaler
    loop is off in this app, so nothing starts)."""
    if "scaled" not in w.cache:
        r = w.api.put(
            f"/orgs/{w.org_slug}/machine-types/cpu/scaling",
            w.people["owner"],
            json={"provider": "process", "max_scale": 1},
        )
        assert r.status_code in (200, 201), r.text
        w.cache["scaled"] = "cpu"
    return w.cache["scaled"]


def _job(w: World, role: str) -> str:
    """A job submitted by the caller (jobs:*-own rules let members see their own)."""
    r = w.api.post(f"/orgs/{w.org_slug}/jobs", w.acting(role), json={"deployment": _deployment(w)})
    return str(_created(r, "a job")["id"])


def _schedule(w: World, role: str) -> str:
    r = w.api.post(
        f"/orgs/{w.org_slug}/schedules",
        w.acting(role),
        json={"deployment": _deployment(w), "cron": "*/15 * * * *"},
    )
    return str(_created(r, "a schedule")["id"])


def _secret(w: World, role: str) -> str:
    """A secret set by the owner (through the service: members may not set one)."""
    name = f"MATRIX_{uuid.uuid4().hex[:8].upper()}"
    with w.api.db.session() as s:
        owner = w.user(s, w.people["owner"])
        ctx = member_context(s, w.org_slug, owner)
        secrets.set_secret(ctx, s, name, "matrix-value", settings=get_settings())
    return name


def _team(w: World, role: str) -> str:
    """A team the owner made with the world's member in it (members see only theirs)."""
    with w.api.db.session() as s:
        ctx = member_context(s, w.org_slug, w.user(s, w.people["owner"]))
        team = teams.create_team(ctx, s, name=_unique("team"))
        teams.add_member(ctx, s, team.name, w.people["member"].name)
        return team.name


def _join_request(w: World, role: str) -> str:
    """A pending request to rejoin from someone who was a member and left."""
    with w.api.db.session() as s:
        name = _unique("former")
        user, _issued = accounts.signup(
            s, email=f"{name}@example.test", name=name, password=password_for(name)
        )
        s.add(FormerMember(org_id=w.org_id, user_id=user.id, how="left", role="member"))
        s.commit()
        join_requests.request_to_rejoin(s, user, w.org_slug, "matrix")
        found = s.scalars(select(JoinRequest.id).where(JoinRequest.user_id == user.id)).one()
        return str(found)


def _registry(w: World, role: str) -> str:
    """A registry the owner added (through the service: members may not add one)."""
    with w.api.db.session() as s:
        owner = w.user(s, w.people["owner"])
        ctx = member_context(s, w.org_slug, owner)
        info, _ = registries.add_registry(
            ctx, s, f"r{uuid.uuid4().hex[:8]}.example.com", "u", "pw", settings=get_settings()
        )
    return str(info.id)


# Path parameter -> example value for (world, role). Keyed "{param}", or "segment/{param}"
# where the parameter's meaning depends on the segment before it (`{id}`, `{name}`).
PATH_EXAMPLES: dict[str, Callable[[World, str], str]] = {
    "{org}": lambda w, role: w.org_slug,
    # POST /orgs/{slug}/join-requests: anyone signed in may ask (members get 409).
    "{slug}": lambda w, role: w.org_slug,
    "join-requests/{id}": _join_request,
    "{user_id}": lambda w, role: w.people["member"].id,
    "{token_id}": _personal_token,
    "{code}": lambda w, role: _invitation(w)[0],
    "invitations/{id}": lambda w, role: _invitation(w)[1],
    "machines/{id}": _machine,
    # Agent routes answer 401 to every user token before looking the run up.
    "{flow_run_id}": lambda w, role: str(uuid.uuid4()),
    "datasets/{name}": _dataset,
    "versions/{version}": _dataset_version,
    "deployments/{name}": _deployment,
    "bundles/{digest}": _bundle,
    "projects/{name}": _project,
    "projects/{project}": _project,
    "machine-types/{type}": _scaled_type,
    "jobs/{id}": _job,
    "schedules/{id}": _schedule,
    "secrets/{name}": _secret,
    "teams/{team}": _team,
    "members/{user}": lambda w, role: w.people["member"].name,
    "registries/{key}": _registry,
    # The console's parameter names.
    "{machine_id}": _machine,
    "{job_id}": _job,
    "{invitation_id}": lambda w, role: _invitation(w)[1],
    "{request_id}": _join_request,
    # Removing a target that is not there is a plain save (the list stays as it is).
    "{target_id}": lambda w, role: str(uuid.uuid4()),
    # The sign-in provider `_matrix_app` configures.
    "{provider}": lambda w, role: "github",
}

# "METHOD /path" -> a minimal valid body for (world, role); routes not listed get `{}`.
BODY_EXAMPLES: dict[str, Callable[[World, str], dict[str, Any]]] = {
    "PUT /orgs/{org}/projects/{project}/datastore": lambda w, role: {"kind": "default"},
    "PUT /orgs/{org}/machine-types/{type}/scaling": lambda w, role: {
        "provider": "process",
        "max_scale": 1,
    },
    "POST /auth/signup": lambda w, role: {
        "email": f"{(n := _unique('new'))}@example.test",
        "name": n,
        "password": password_for(n),
    },
    "POST /auth/login": lambda w, role: {
        "email": w.own(role).email,
        "password": password_for(w.own(role).name),
    },
    "POST /me/tokens": lambda w, role: {"name": "matrix", "expires_in_days": 1},
    "PUT /me/notifications": lambda w, role: {"job_email": "all"},
    "POST /orgs": lambda w, role: {"name": _unique("Matrix new")},
    "PATCH /orgs/{org}": lambda w, role: {"description": "Changed by the permission matrix."},
    "DELETE /orgs/{org}": lambda w, role: {"confirm": w.org_name},
    "POST /orgs/{org}/transfer-ownership": lambda w, role: {"user_id": w.people["member"].id},
    "PATCH /orgs/{org}/members/{user_id}": lambda w, role: {"role": "member"},
    "PUT /orgs/{org}/settings": lambda w, role: {"description": "Set by the permission matrix."},
    "POST /orgs/{org}/invitations": lambda w, role: {"role": "member", "max_uses": 1},
    "POST /orgs/{org}/machines": lambda w, role: {
        "name": _unique("m"),
        "machine_type": "cpu",
        "hardware": {},
        "slots": 1,
    },
    "POST /orgs/{org}/datasets": lambda w, role: {"name": _unique("ds")},
    "POST /orgs/{org}/teams": lambda w, role: {"name": _unique("team")},
    "POST /orgs/{org}/teams/{team}/members": lambda w, role: {"user": w.people["admin"].name},
    "POST /orgs/{org}/deployments": lambda w, role: {
        "name": _unique("deploy"),
        "entrypoint": "flows/library/train.py:train",
        "machine_type": "cpu",
    },
    "POST /orgs/{org}/projects": lambda w, role: {
        "name": _unique("proj").lower(),
        "git_url": "git@github.com:team/matrix.git",
    },
    "PATCH /orgs/{org}/projects/{name}": lambda w, role: {"description": "Matrix."},
    "POST /orgs/{org}/jobs": lambda w, role: {"deployment": _deployment(w)},
    "POST /orgs/{org}/jobs/explain": lambda w, role: {"deployment": _deployment(w)},
    "PATCH /orgs/{org}/jobs/{id}/tags": lambda w, role: {"add": ["matrix"]},
    "POST /orgs/{org}/jobs:batch": lambda w, role: {"jobs": [{"deployment": _deployment(w)}]},
    "POST /orgs/{org}/schedules": lambda w, role: {
        "deployment": _deployment(w),
        "cron": "*/15 * * * *",
    },
    "PATCH /orgs/{org}/schedules/{id}": lambda w, role: {"active": False},
    "PUT /orgs/{org}/secrets/{name}": lambda w, role: {"value": "matrix-value"},
    "PUT /orgs/{org}/projects/{name}/git-token": lambda w, role: {"token": "matrix-token"},
    "POST /orgs/{org}/registries": lambda w, role: {
        "registry": f"r{uuid.uuid4().hex[:8]}.example.com",
        "username": "matrix",
        "password": "matrix-value",
    },
}


def fill_path(rule: RouteRule, world: World, role: str) -> str:
    path = rule.path
    for match in list(_PARAM_RE.finditer(rule.path)):
        name = match.group(1)
        before = rule.path[: match.start()].rstrip("/").rsplit("/", 1)[-1]
        keys = [f"{before}/{{{name}}}", f"{{{name}}}"]
        resolver = next((PATH_EXAMPLES[k] for k in keys if k in PATH_EXAMPLES), None)
        if resolver is None:
            pytest.fail(
                f"{rule.label}: no example value for path parameter {{{name}}}; add one to "
                f"PATH_EXAMPLES in {Path(__file__).name} (keyed {keys[0]!r} or {keys[1]!r}), "
                "preferably a real row of the world."
            )
        path = path.replace(match.group(0), resolver(world, role), 1)
    return path


def send(rule: RouteRule, world: World, role: str) -> httpx.Response:
    url = fill_path(rule, world, role)
    # Routes that read the raw request (PUT settings) declare no body; their example counts.
    example = BODY_EXAMPLES.get(rule.label)
    body = example(world, role) if example else ({} if rule.has_body else None)
    caller = world.caller(role)
    headers = caller.headers if caller else {}
    response: httpx.Response = world.api.client.request(
        rule.method, url, headers=headers, json=body
    )
    return response


# ----------------------------------------------------------------------- expectations


def expected(rule: RouteRule, role: str) -> int | None:
    """The exact status a (route, role) must get, or None for 'allowed'."""
    if rule.kind == "public":
        return None
    if role == "anonymous" or rule.kind == "machine":
        return 401
    if rule.kind == "authenticated":
        return None
    if role == "non_member":
        return 404
    if rule.kind == "job":
        return 403
    assert rule.permission is not None
    return None if rule.permission in ROLE_PERMISSIONS[MEMBER_ROLES[role]] else 403


def check(rule: RouteRule, role: str, r: httpx.Response) -> None:
    want = expected(rule, role)
    shown = f"{rule.label} as {role}: got {r.status_code} {r.text[:300]}"
    if want is not None:
        assert r.status_code == want, f"{shown}; expected {want}"
        body = r.json()
        assert {"error", "detail"} <= set(body), f"{shown}; errors are {{error, detail}}"
        return
    why = f" ({rule.permission.value} is granted to {role})" if rule.permission else ""
    assert r.status_code not in (401, 403, 404), f"{shown}; expected to be allowed{why}"
    # 503 is the documented 'a dependency is down' answer (e.g. no Prefect in this test);
    # anything else >= 500 is a bug.
    server_error = r.status_code >= 500 and not (
        r.status_code == 503 and r.json().get("error") not in (None, "internal")
    )
    assert not server_error, f"{shown}; server error"


# ------------------------------------------------------------------------ the console


@dataclass(frozen=True)
class PageBody:
    """What a console request carries: a form (the CSRF field is added), or raw bytes."""

    form: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)


def _limits_yaml(w: World, role: str) -> PageBody:
    yaml_text = (
        "organization:\n  limits:\n    max_job_runtime: 7200\n"
        "  machine_types:\n    cpu: {max_scale: 100, per_user_quota: 20}\n"
    )
    return PageBody({"mode": "yaml", "yaml": yaml_text})


def _logo_upload(w: World, role: str) -> PageBody:
    """A real PNG as the browser's multipart form sends it."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 90, 200)).save(out, format="PNG")
    boundary = "matrixboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="logo"; '
            f'filename="logo.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + out.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return PageBody(
        content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )


# "METHOD /path" of a console route -> a valid request for (world, role); GETs and forms
# without fields need none.
FORM_EXAMPLES: dict[str, Callable[[World, str], PageBody]] = {
    "POST /login": lambda w, role: PageBody(
        {"email": w.own(role).email, "password": password_for(w.own(role).name)}
    ),
    # An unknown ticket: back to the password form (nobody in the world has 2FA).
    "POST /login/2fa": lambda w, role: PageBody({"ticket": "cs_2fa_matrix", "code": "123456"}),
    "POST /signup": lambda w, role: PageBody(
        {"email": f"{(n := _unique('new'))}@example.test", "name": n, "password": password_for(n)}
    ),
    "POST /orgs/new": lambda w, role: PageBody({"name": _unique("Console new")}),
    "POST /account/2fa/confirm": lambda w, role: PageBody({"code": "123456"}),
    "POST /account/2fa/disable": lambda w, role: PageBody({"code": "123456"}),
    "POST /join": lambda w, role: PageBody({"code": _invitation(w)[0]}),
    "POST /orgs/{org}/leave": lambda w, role: PageBody({"confirm": "yes"}),
    "POST /orgs/{org}/invitations": lambda w, role: PageBody({"role": "member", "max_uses": "1"}),
    "POST /orgs/{org}/members/{user_id}/role": lambda w, role: PageBody({"role": "member"}),
    "POST /orgs/{org}/machines/{machine_id}/reject": lambda w, role: PageBody({"reason": "no"}),
    "POST /orgs/{org}/datasets": lambda w, role: PageBody({"name": _unique("ds")}),
    "POST /orgs/{org}/projects": lambda w, role: PageBody({"name": _unique("proj").lower()}),
    "POST /orgs/{org}/teams": lambda w, role: PageBody({"name": _unique("team")}),
    "POST /orgs/{org}/teams/{team}/members": lambda w, role: PageBody(
        {"user": w.people["admin"].name}
    ),
    "POST /orgs/{org}/teams/{team}/members/remove": lambda w, role: PageBody(
        {"user": w.people["member"].name}
    ),
    "POST /orgs/{org}/datasets/{name}/versions": lambda w, role: PageBody(
        content=b"console bytes",
        headers={"Content-Type": "application/octet-stream", "Accept": "application/json"},
        query={"filename": "console.bin"},
    ),
    "POST /orgs/{org}/datasets/{name}/access": lambda w, role: PageBody({"visibility": "org"}),
    "POST /orgs/{org}/datasets/{name}/delete": lambda w, role: PageBody(
        {"confirm": w.cache["dataset"].split("\n")[0]}
    ),
    "POST /orgs/{org}/settings/general": lambda w, role: PageBody({"name": w.org_name}),
    "POST /orgs/{org}/settings/invitations": lambda w, role: PageBody(
        {"who_may_invite": "members", "default_expiry_hours": "24"}
    ),
    "POST /orgs/{org}/settings/machines": lambda w, role: PageBody({"offline_after_s": "120"}),
    "POST /orgs/{org}/settings/limits": _limits_yaml,
    # Loopback is allowed in the matrix app (no network in tests); nothing listens on 9.
    "POST /orgs/{org}/settings/notifications": lambda w, role: PageBody(
        {"kind": "webhook", "url": "http://127.0.0.1:9/matrix", "secret": "s" * 16}
    ),
    "POST /orgs/{org}/settings/delete": lambda w, role: PageBody({"confirm": w.org_name}),
    "POST /orgs/{org}/settings/logo": _logo_upload,
    "POST /orgs/{org}/join-requests/{request_id}/approve": lambda w, role: PageBody(
        {"role": "member"}
    ),
    "POST /rejoin": lambda w, role: PageBody({"org": w.org_slug, "note": "matrix"}),
    "POST /orgs/{org}/jobs/{job_id}/tags": lambda w, role: PageBody({"add": "matrix"}),
    "POST /account/notifications": lambda w, role: PageBody({"job_email": "failures"}),
    "POST /orgs/{org}/registries": lambda w, role: PageBody(
        {"registry": f"r{uuid.uuid4().hex[:8]}.example.com", "username": "m", "password": "pw"}
    ),
    "POST /account/tokens": lambda w, role: PageBody({"name": "matrix"}),
    # Explain: the admission decision, nothing created.
    "POST /orgs/{org}/jobs/new": lambda w, role: PageBody(
        {"deployment": _deployment(w), "action": "explain"}
    ),
    # The instance's default store: valid for anyone allowed to configure stores.
    "POST /orgs/{org}/datastores": lambda w, role: PageBody({"kind": "default"}),
    "POST /orgs/{org}/secrets": lambda w, role: PageBody(
        {"name": f"MATRIX_{uuid.uuid4().hex[:8].upper()}", "value": "matrix-value"}
    ),
}

# (console route, role) -> the status it must get instead of 200/201/303, and why.
PAGE_OUTCOMES: dict[tuple[str, str], tuple[int, str]] = {
    **{
        (page, role): (422, "no provider sign-in in progress in this browser")
        for page in (
            "GET /sso/{provider}/callback",
            "GET /sso/link",
            "POST /sso/link",
            "GET /sso/approve",
            "POST /sso/approve",
        )
        for role in ROLES
    },
    ("POST /orgs/{org}/leave", "owner"): (409, "the last owner cannot leave"),
    **{
        (page, role): (409, reason)
        for page, reason in (
            ("POST /account/2fa/confirm", "nothing to confirm: nobody began enrolling"),
            ("POST /account/2fa/disable", "two-factor is not on for anyone in the world"),
        )
        for role in (*MEMBER_ROLES, "non_member")
    },
    **{
        ("GET /orgs/{org}/logo", role): (204, "the world's organization has no logo")
        for role in MEMBER_ROLES
    },
    **{
        ("POST /rejoin", role): (409, "a member asking to rejoin their own organization")
        for role in MEMBER_ROLES
    },
    **{
        (page, role): (409, "already a member of the invitation's organization")
        for page in ("POST /join", "POST /invitations/{code}/accept")
        for role in MEMBER_ROLES
    },
}
PAGE_OK = frozenset({200, 201, 303})
ANONYMOUS_CSRF = "matrix-anonymous-csrf-token"


def send_page(app: Any, rule: RouteRule, world: World, role: str) -> httpx.Response:
    """The request as a browser sends it: its own cookie jar, the CSRF token in the form
    (or the header, for raw uploads)."""
    url = fill_path(rule, world, role)
    example = FORM_EXAMPLES.get(rule.label)
    body = example(world, role) if example else PageBody()
    caller = world.caller(role)
    browser = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    if caller is not None:
        browser.cookies.set(web_session.SESSION_COOKIE, caller.token)
        token = csrf.token_for_session(caller.token)
    else:
        browser.cookies.set(csrf.CSRF_COOKIE, ANONYMOUS_CSRF)
        token = ANONYMOUS_CSRF
    response: httpx.Response
    if rule.method == "GET":
        response = browser.get(url, params=body.query)
    elif body.content is not None:
        headers = {**body.headers, csrf.CSRF_HEADER: token}
        response = browser.request(
            rule.method, url, params=body.query, content=body.content, headers=headers
        )
    else:
        form = {**body.form, csrf.CSRF_FIELD: token}
        response = browser.request(rule.method, url, params=body.query, data=form)
    return response


SIGN_IN = -1  # the expected "status" of a redirect to the sign-in page


def expected_page(rule: RouteRule, role: str) -> int | None:
    """SIGN_IN, an exact status, or None for 'allowed'."""
    if rule.kind == "public":
        return None
    if role == "anonymous":
        return SIGN_IN
    if rule.kind == "authenticated":
        return None
    if role == "non_member":
        return 404
    if rule.kind == "job":
        return 403
    assert rule.permission is not None
    return None if rule.permission in ROLE_PERMISSIONS[MEMBER_ROLES[role]] else 403


def check_page(rule: RouteRule, world: World, role: str, r: httpx.Response) -> None:
    want = expected_page(rule, role)
    where = r.headers.get("location", "")
    shown = f"console {rule.label} as {role}: got {r.status_code} {where or r.text[:300]}"
    to_sign_in = r.status_code == 303 and where.startswith("/login?next=")
    # The upload script asks for JSON: the same answers, as the API's error bodies.
    wants_json = "application/json" in r.request.headers.get("accept", "")
    if want == SIGN_IN and wants_json:
        want = 401
    elif want == SIGN_IN:
        assert to_sign_in, f"{shown}; expected a redirect to /login?next=..."
        return
    if want is not None:
        assert r.status_code == want, f"{shown}; expected {want}"
        if wants_json:
            assert {"error", "detail"} <= set(r.json()), f"{shown}; errors are {{error, detail}}"
        else:
            assert r.headers["content-type"].startswith("text/html"), f"{shown}; an HTML page"
        assert world.org_name not in r.text, f"{shown}; the page names the organization"
        return
    special = PAGE_OUTCOMES.get((rule.label, role))
    if special is not None:
        assert r.status_code == special[0], f"{shown}; expected {special[0]}: {special[1]}"
        return
    if rule.kind == "public":  # it may send a visitor to sign in first, as it likes
        assert r.status_code in PAGE_OK, f"{shown}; expected 200, 201 or 303"
        return
    why = f" ({rule.permission.value} is granted to {role})" if rule.permission else ""
    assert r.status_code in PAGE_OK and not to_sign_in, f"{shown}; expected to be allowed{why}"


def run_case(api: ApiClient, rule: RouteRule, role: str) -> None:
    if rule.problem:
        pytest.fail(rule.problem)
    world = build_world(api)
    if rule.surface == "console":
        check_page(rule, world, role, send_page(api.client.app, rule, world, role))
    else:
        check(rule, role, send(rule, world, role))


# ---------------------------------------------------------------------------- the tests


def test_every_route_is_classified() -> None:
    """One failure listing every route that has no rule (the matrix fails them one by one)."""
    assert RULES, "the app has no routes?"
    assert PAGE_RULES, "the console has no routes?"
    problems = [r.problem for r in (*RULES, *PAGE_RULES) if r.problem]
    assert not problems, "\n".join(problems)


def test_every_example_names_a_route() -> None:
    """A renamed or removed route must not leave its example (or exception) behind."""
    pages = {r.label for r in PAGE_RULES}
    assert set(FORM_EXAMPLES) <= pages, set(FORM_EXAMPLES) - pages
    assert {label for label, _role in PAGE_OUTCOMES} <= pages
    assert set(PUBLIC_PAGES) <= pages, set(PUBLIC_PAGES) - pages


def test_every_required_permission_is_granted_to_someone() -> None:
    for rule in (*RULES, *PAGE_RULES):
        if rule.permission is not None:
            assert rule.permission in ROLE_PERMISSIONS[Role.owner], (
                f"{rule.label} requires {rule.permission.value}, which no role has"
            )


def test_classifier_catches_routes_without_a_rule() -> None:
    """The guard itself: an org route without Requires, and an unlisted public route."""
    app = FastAPI()

    @app.get(API_PREFIX + "/orgs/{org}/forgotten")
    def forgotten(org: str = PathParam()) -> None:
        return None

    @app.get(API_PREFIX + "/orgs/{org}/doubled")
    def doubled(
        a: Any = Depends(Requires(Permission.org_view)),
        b: Any = Depends(Requires(Permission.org_update)),
    ) -> None:
        return None

    @app.get(API_PREFIX + "/surprise")
    def surprise() -> None:
        return None

    @app.get(API_PREFIX + "/mine")
    def mine(user: deps.CurrentUser) -> None:
        return None

    by_label = {r.label: r for r in route_rules(app)}
    assert "add a Requires(" in str(by_label["GET /orgs/{org}/forgotten"].problem)
    assert "exactly one" in str(by_label["GET /orgs/{org}/doubled"].problem)
    assert "PUBLIC_ROUTES" in str(by_label["GET /surprise"].problem)
    assert by_label["GET /mine"].kind == "authenticated"


def test_classifier_catches_pages_without_a_rule() -> None:
    """The same guard for the console: a page that checks inside its body (invisible to
    the matrix), one with the API's bearer rule, and an unlisted signed-out page."""
    pages = FastAPI()

    @pages.get("/orgs/{org}/checks-inside")
    def checks_inside(page: OrgPage = Depends(org_page)) -> None:
        page.require(Permission.org_view)

    @pages.get("/orgs/{org}/bearer")
    def bearer(ctx: Any = Depends(Requires(Permission.org_view))) -> None:
        return None

    @pages.get("/orgs/{org}/declared")
    def declared(page: Any = Depends(PageRequires(Permission.audit_view))) -> None:
        return None

    @pages.get("/surprise")
    def surprise() -> None:
        return None

    @pages.get("/mine")
    def mine(viewer: web_session.ViewerDep) -> None:
        return None

    rules = [
        classify_page(path, method, dependant)
        for path, methods, dependant in api_routes(pages)
        for method in methods
    ]
    by_label = {r.label: r for r in rules}
    assert "PageRequires(" in str(by_label["GET /orgs/{org}/checks-inside"].problem)
    assert "PageRequires(" in str(by_label["GET /orgs/{org}/bearer"].problem)
    assert by_label["GET /orgs/{org}/declared"].permission is Permission.audit_view
    assert "PUBLIC_PAGES" in str(by_label["GET /surprise"].problem)
    assert by_label["GET /mine"].kind == "authenticated"


CASES = [
    pytest.param(rule, role, id=f"{rule.test_id} as {role}")
    for rule in (*RULES, *PAGE_RULES)
    for role in ROLES
]


class MatrixPrefect(FakePrefect):
    """The in-memory Prefect of the job tests, plus the schedule calls it lacks."""

    def set_deployment_schedule_active(
        self, deployment_id: uuid.UUID, schedule_id: uuid.UUID, active: bool
    ) -> None:
        return None

    def delete_deployment_schedule(self, deployment_id: uuid.UUID, schedule_id: uuid.UUID) -> None:
        return None


@contextmanager
def _matrix_app(db: Database) -> Iterator[ApiClient]:
    """The app with an in-memory Prefect, so deployments and jobs are real rows.

    One app and database per module: every case builds its own world (unique users and
    orgs), so cases cannot see each other, and no case pays for a database or app start.
    """
    try:
        with jobs_app(
            db,
            MatrixPrefect(),
            notifications_allow_loopback=True,
            # /metrics takes its own token, not a user's (tests/integration/
            # test_metrics_access.py); open here, it is public like /healthz.
            metrics_open=True,
            # Scaling rules may be attached (the process provider allowed), but the scaler
            # loop is off: nothing starts machines here (tests/e2e/test_elastic.py does).
            elastic_process_enabled=True,
            elastic_interval_s=0,
            # A provider whose sign-in starts without a network call (GitHub's URLs).
            sso_providers=[
                SsoProvider(name="github", kind="github", client_id="m", client_secret="s")
            ],
        ) as api:
            yield api
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def matrix_api(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[ApiClient]:
    path = tmp_path_factory.mktemp("matrix") / "cshare.db"
    shutil.copy(sqlite_template, path)
    with _matrix_app(Database(f"sqlite:///{path}")) as api:
        yield api


@pytest.fixture(scope="module")
def matrix_pg_api(pg_server_url: str) -> Iterator[ApiClient]:
    with _matrix_app(Database(pg_server_url)) as api:
        yield api


@pytest.mark.parametrize(("rule", "role"), CASES)
def test_route_as_role(matrix_api: ApiClient, rule: RouteRule, role: str) -> None:
    run_case(matrix_api, rule, role)


def _boundary_roles(rule: RouteRule) -> list[str]:
    """Where the answer flips: the lowest role allowed and the highest role refused."""
    if rule.kind != "org" or rule.permission is None:
        return ["member"]
    ranked = sorted(MEMBER_ROLES, key=lambda r: MEMBER_ROLES[r].rank)
    allowed = [r for r in ranked if rule.permission in ROLE_PERMISSIONS[MEMBER_ROLES[r]]]
    refused = [r for r in ranked if r not in allowed]
    return allowed[:1] + refused[-1:]


PG_CASES = [
    pytest.param(rule, role, id=f"{rule.test_id} as {role}")
    for rule in (*RULES, *PAGE_RULES)
    for role in _boundary_roles(rule)
]


@pytest.mark.postgres
@pytest.mark.parametrize(("rule", "role"), PG_CASES)
def test_route_as_role_on_postgres(matrix_pg_api: ApiClient, rule: RouteRule, role: str) -> None:
    """The permission boundary of every route, once more on PostgreSQL."""
    run_case(matrix_pg_api, rule, role)


def test_world_is_what_the_matrix_assumes(sqlite_api: ApiClient) -> None:
    world = build_world(sqlite_api)
    with sqlite_api.db.session() as s:
        rows = s.execute(
            select(Membership.user_id, Membership.role).where(Membership.org_id == world.org_id)
        ).all()
        roles = {str(user_id): role for user_id, role in rows}
        other = s.scalars(select(Organization).where(Organization.slug == world.other_org_slug))
        assert other.one() is not None
    assert roles == {world.people[r].id: MEMBER_ROLES[r].value for r in MEMBER_ROLES}
    r = sqlite_api.get(f"/orgs/{world.org_slug}", world.people["non_member"])
    assert r.status_code == 404
