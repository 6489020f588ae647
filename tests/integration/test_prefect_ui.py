"""The Prefect UI behind the console's sign-in, against the session's real Prefect server
and a real uvicorn server of the app: who gets the UI, where it points, and that its
calls (made with the console's session cookie, as a browser does) return only what the
rules allow. Each attack passes only when it fails."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.prefect_proxy.ui import PLACEHOLDER
from flows.gateway import PrefectGateway
from orgs.db import Database
from tests.integration.test_jobs_support import (
    OrgSetup,
    limits_doc,
    settings_with,
    setup_org,
    wait_for,
)
from tests.support import ApiClient, Person, serve_in_thread

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(300),
]

EPOCHS = {"epochs": 1}
OPERATOR = f"op{uuid.uuid4().hex[:8]}"


@dataclass
class Stack:
    api: ApiClient
    root: str
    http: httpx.Client

    def browser(self, who: Person | None = None) -> Browser:
        client = httpx.Client(base_url=self.root, timeout=60, follow_redirects=False)
        if who is not None:
            client.cookies.set("cshare_session", who.token)
        return Browser(client)


@dataclass
class Browser:
    """One signed-in browser: the session cookie, and the CSRF token the UI fetches."""

    client: httpx.Client

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def csrf(self, api: str, client_id: str = "ui-client-1") -> dict[str, str]:
        r = self.client.get(f"{api}/csrf-token", params={"client": client_id})
        assert r.status_code == 200, r.text
        return {"Prefect-Csrf-Token": r.json()["token"], "Prefect-Csrf-Client": client_id}

    def call(self, method: str, api: str, path: str, *, csrf: bool = True, **kw: Any) -> Any:
        headers = self.csrf(api) if csrf else {}
        return self.client.request(method, api + path, headers=headers, **kw)


@pytest.fixture
def stack(sqlite_database: Database, prefect_gateway: PrefectGateway) -> Iterator[Stack]:
    app = create_app(
        settings_with(operators=f" Nobody@x.test, {OPERATOR.upper()} "),
        sqlite_database,
        prefect_gateway,
    )
    with (
        serve_in_thread(app) as base,
        httpx.Client(base_url=base.removesuffix("/api/v1"), timeout=60) as http,
    ):
        yield Stack(ApiClient(http, sqlite_database), base.removesuffix("/api/v1"), http)  # type: ignore[arg-type]


def _org(stack: Stack) -> tuple[OrgSetup, str, str]:
    """An org with a deployment and one admitted job: (org, job id, flow run id)."""
    org = setup_org(stack.api, f"ui{uuid.uuid4().hex[:8]}", limits_doc(concurrent=5, queued=5))
    org.deploy("train")
    job = org.submit(org.owner, "train", parameters=EPOCHS).json()
    assert job["flow_run_id"], job
    return org, job["id"], job["flow_run_id"]


def _ids(r: httpx.Response, key: str | None = None) -> set[str]:
    assert r.status_code == 200, r.text
    items = r.json()[key] if key else r.json()
    return {i["id"] for i in items}


def test_anonymous_is_sent_to_sign_in(stack: Stack) -> None:
    org, _, run = _org(stack)
    anon = stack.browser()
    for path in (
        f"/prefect/{org.slug}/",
        f"/prefect/{org.slug}/runs",
        "/prefect/admin/",
        "/prefect/",
    ):
        r = anon.get(path)
        assert r.status_code == 303, (path, r.status_code)
        assert r.headers["location"] == f"/login?next={path}"
    r = anon.client.post(f"/prefect/{org.slug}/api/flow_runs/filter", json={})
    assert r.status_code == 401
    # A signed-out cookie is no session.
    stale = stack.browser(org.owner)
    assert stack.api.post("/auth/logout", org.owner).status_code in (200, 204)
    assert stale.get(f"/prefect/{org.slug}/").status_code == 303
    assert stale.client.post(f"/prefect/{org.slug}/api/flow_runs/{run}", json={}).status_code == 401


def test_members_and_outsiders_get_no_ui(stack: Stack) -> None:
    org, _, run = _org(stack)
    member = stack.browser(org.add_member("member"))
    r = member.get(f"/prefect/{org.slug}/")
    assert r.status_code == 403 and "ui_admins_only" in r.text
    assert "text/html" in r.headers["content-type"]
    assert member.get(f"/prefect/{org.slug}/ui-settings").status_code == 403
    r = member.call("POST", f"/prefect/{org.slug}/api", "/flow_runs/filter", csrf=False, json={})
    assert r.status_code == 403 and r.json()["error"] == "ui_admins_only"
    r = member.get(f"/prefect/{org.slug}/api/flow_runs/{run}")
    assert r.status_code == 403
    r = member.get("/prefect/")
    assert r.status_code == 403 and "ui_admins_only" in r.text
    # Not an operator: neither the instance-wide UI nor its API.
    assert member.get("/prefect/admin/").status_code == 403
    r = member.client.get(f"/prefect/api/flow_runs/{run}")
    assert r.status_code == 403 and r.json()["error"] == "ui_operators_only"
    # Someone outside the org does not learn it exists.
    outsider = stack.browser(stack.api.signup())
    assert outsider.get(f"/prefect/{org.slug}/").status_code == 404


def test_admin_gets_the_ui_pointed_at_the_proxy_and_sees_only_their_org(stack: Stack) -> None:
    org_a, job_a, run_a = _org(stack)
    org_b, _job_b, run_b = _org(stack)
    admin = org_a.add_member("admin")
    ui = stack.browser(admin)
    base, api = f"/prefect/{org_a.slug}", f"/prefect/{org_a.slug}/api"

    index = ui.get(f"{base}/")
    assert index.status_code == 200 and '<div id="app">' in index.text
    assert f"{base}/assets/" in index.text and PLACEHOLDER.decode() not in index.text
    assert index.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
    # Deep links get the app too; the UI routes in the browser.
    assert ui.get(f"{base}/runs/flow-run/{run_a}").text == index.text
    settings = ui.get(f"{base}/ui-settings").json()
    assert settings["api_url"] == api and settings["csrf_enabled"] is True
    assert settings["auth"] is None and settings["v1_base_url"] == base
    script = index.text.split('<script type="module" crossorigin src="')[1].split('"')[0]
    js = ui.get(script)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert f"return`{base}`" in js.text  # the UI's router base
    assert ui.get(f"{base}/assets/nope.js").status_code == 404
    assert ui.get(f"{base}/..%2f..%2f..%2fetc/passwd").status_code in (200, 404)
    assert "root:" not in ui.get(f"{base}/..%2f..%2f..%2fetc/passwd").text

    # The UI's calls, as the browser makes them: the cookie, the CSRF headers.
    both = {"flow_runs": {"id": {"any_": [run_a, run_b]}}}
    assert _ids(ui.call("POST", api, "/flow_runs/filter", json=both)) == {run_a}
    assert _ids(ui.call("POST", api, "/flow_runs/filter", json={})) == {run_a}
    page = ui.call(
        "POST", api, "/flow_runs/paginate", json={"flow_runs": {"id": {"any_": [run_b]}}}
    )
    assert _ids(page, "results") == set()
    assert _ids(ui.call("POST", api, "/flow_runs/paginate", json={}), "results") == {run_a}
    count = ui.call("POST", api, "/flow_runs/count", json=both)
    assert count.status_code == 200 and count.json() == 1
    history = ui.call("POST", api, "/ui/flow_runs/history", json={"limit": 50})
    assert _ids(history) == {run_a}
    deps = ui.call("POST", api, "/deployments/filter", json={})
    assert {d["name"] for d in deps.json()} == {f"{org_a.slug}.train"}
    b_dep = stack.api.get(f"/orgs/{org_b.slug}/deployments", org_b.owner).json()
    b_dep_ids = [d["prefect_deployment_id"] for d in b_dep["items"]]
    named = ui.call(
        "POST", api, "/deployments/filter", json={"deployments": {"id": {"any_": b_dep_ids}}}
    )
    assert named.status_code == 200 and named.json() == []
    assert ui.call("POST", api, "/deployments/count", json={}).json() == 1
    pools = ui.call("POST", api, "/work_pools/filter", json={})
    assert pools.status_code == 200
    assert all(p["name"].startswith(f"{org_a.slug}-") for p in pools.json())
    tasks = ui.call("POST", api, "/task_runs/filter", json=both)
    assert tasks.status_code == 200
    assert {t["flow_run_id"] for t in tasks.json()} <= {run_a}
    assert ui.call("POST", api, "/flows/filter", json={}).status_code == 200
    logs = ui.call("POST", api, "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_b]}}})
    assert logs.status_code == 200 and logs.json() == []

    # Events: only those about the org's runs, even when asking for B's run.
    def events(flt: dict[str, Any]) -> list[dict[str, Any]]:
        r = ui.call("POST", api, "/events/filter", json={"filter": flt, "limit": 50})
        assert r.status_code == 200, r.text
        assert r.json()["next_page"] is None
        out: list[dict[str, Any]] = r.json()["events"]
        return out

    wait_for(lambda: bool(events({})), 20)
    for event in events({}):
        named = {event["resource"]["prefect.resource.id"]} | {
            rel["prefect.resource.id"] for rel in event.get("related", [])
        }
        assert f"prefect.flow-run.{run_a}" in named, event
    assert events({"any_resource": {"id": [f"prefect.flow-run.{run_b}"]}}) == []
    # The sidebar's settings and the saved searches: Compute Share answers them.
    assert ui.get(f"{api}/admin/settings").json() == {
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": False
    }
    assert ui.call("POST", api, "/saved_searches/filter", json={}).json() == []
    # B's objects named directly, an or_ that would widen the scope, and B's path.
    assert ui.get(f"{api}/flow_runs/{run_b}").status_code == 403
    widened = {"flow_runs": {"operator": "or_", "id": {"any_": [run_a]}}}
    assert ui.call("POST", api, "/flow_runs/filter", json=widened).status_code == 422
    assert (
        ui.call(
            "POST", f"/prefect/{org_b.slug}/api", "/flow_runs/filter", csrf=False, json={}
        ).status_code
        == 404
    )
    assert ui.get(f"/prefect/{org_b.slug}/").status_code == 404

    # Writes: CSRF headers are required and bound to this session.
    r = ui.call("POST", api, "/flow_runs/filter", csrf=False, json={})
    assert r.status_code == 403 and "Invalid CSRF token" in r.json()["detail"]
    forged = stack.browser(org_b.owner).csrf(f"/prefect/{org_b.slug}/api")
    r = ui.client.post(f"{api}/flow_runs/filter", headers=forged, json={})
    assert r.status_code == 403 and r.json()["error"] == "ui_csrf"
    # Deleting a deployment or a pool, or a raw run: denied as for the admin's token.
    a_dep = stack.api.get(f"/orgs/{org_a.slug}/deployments", org_a.owner).json()["items"][0]
    r = ui.call("DELETE", api, f"/deployments/{a_dep['prefect_deployment_id']}")
    assert r.status_code == 403 and r.json()["error"] == "allowlist"
    assert ui.call("DELETE", api, f"/work_pools/{org_a.slug}-cpu").status_code == 403
    # Cancel from the UI is a job cancel through the ledger.
    cancel = {"state": {"type": "CANCELLING", "name": "Cancelling"}}
    assert ui.call("POST", api, f"/flow_runs/{run_b}/set_state", json=cancel).status_code == 403
    r = ui.call("POST", api, f"/flow_runs/{run_a}/set_state", json=cancel)
    assert r.status_code == 200, r.text
    assert org_a.job(org_a.owner, job_a)["state"] in ("cancelling", "cancelled")

    # The console links to it for admins (and not for members).
    nav = stack.browser(admin).get(f"/orgs/{org_a.slug}")
    assert f'href="{base}/"' in nav.text
    member_nav = stack.browser(org_a.add_member("member")).get(f"/orgs/{org_a.slug}")
    assert member_nav.status_code == 200 and f'href="{base}/"' not in member_nav.text
    # The console's /prefect/ lists the orgs whose UI this person may open.
    landing = ui.get("/prefect/")
    assert landing.status_code == 200 and f'href="{base}/"' in landing.text


def test_operator_sees_every_org(stack: Stack) -> None:
    org_a, _, run_a = _org(stack)
    org_b, _, run_b = _org(stack)
    operator = stack.browser(stack.api.signup(OPERATOR))
    r = operator.get("/prefect/")
    assert r.status_code == 303 and r.headers["location"] == "/prefect/admin/"
    index = operator.get("/prefect/admin/")
    assert index.status_code == 200 and "/prefect/admin/assets/" in index.text
    settings = operator.get("/prefect/admin/ui-settings").json()
    assert settings["api_url"] == "/prefect/api"
    both = {"flow_runs": {"id": {"any_": [run_a, run_b]}}}
    assert _ids(operator.call("POST", "/prefect/api", "/flow_runs/filter", json=both)) == {
        run_a,
        run_b,
    }
    deps = operator.call("POST", "/prefect/api", "/deployments/filter", json={}).json()
    assert {f"{org_a.slug}.train", f"{org_b.slug}.train"} <= {d["name"] for d in deps}
    # Even an operator's UI does not wipe Prefect's database nor make unadmitted runs.
    r = operator.call("POST", "/prefect/api", "/admin/database/clear", json={"confirm": True})
    assert r.status_code == 403 and r.json()["error"] == "operator_database"
    dep_id = deps[0]["id"]
    r = operator.call("POST", "/prefect/api", f"/deployments/{dep_id}/create_flow_run", json={})
    assert r.status_code == 403 and r.json()["error"] == "operator_submit"
    assert (
        operator.call("POST", "/prefect/api", "/flow_runs/filter", csrf=False, json={}).status_code
        == 403
    )
    # Operators are no member of the orgs: their org paths stay closed.
    assert operator.get(f"/prefect/{org_a.slug}/").status_code == 404
    # A machine or personal token in the cookie is no console session.
    personal = stack.api.post("/me/tokens", org_a.owner, json={"name": "cli"}).json()["token"]
    sneaky = stack.browser()
    sneaky.client.cookies.set("cshare_session", personal)
    assert sneaky.get(f"/prefect/{org_a.slug}/").status_code == 303
    assert sneaky.client.get(f"/prefect/{org_a.slug}/api/flow_runs/{run_a}").status_code == 401
