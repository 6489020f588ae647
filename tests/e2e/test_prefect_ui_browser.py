"""The Prefect UI behind Compute Share in a real browser (Debian's headless Chromium,
driven by Playwright), against the session's real Prefect server: an admin of org A
opens /prefect/<A>/runs and sees A's run and not B's; an operator sees both at
/prefect/admin/runs; the UI loads under its Content-Security-Policy with no refused
call. Screenshots go to artifacts/screenshots/. Without Chromium the module skips,
except under CI=true.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from flows.gateway import PrefectGateway
from orgs.db import Database
from tests.e2e.test_web_browser import SHOTS, browser  # noqa: F401 - the shared fixture
from tests.integration.test_jobs_support import OrgSetup, limits_doc, settings_with, setup_org
from tests.support import ApiClient, Person, serve_in_thread

pytestmark = [
    pytest.mark.slow,
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.timeout(300),
]

OPERATOR = f"op{uuid.uuid4().hex[:8]}"


def _org(api: ApiClient) -> tuple[OrgSetup, str]:
    org = setup_org(api, f"ub{uuid.uuid4().hex[:8]}", limits_doc(concurrent=5, queued=5))
    org.deploy("train")
    job = org.submit(org.owner, "train", parameters={"epochs": 1}).json()
    assert job["flow_run_id"], job
    return org, job["flow_run_id"]


class Watch:
    """A page's console errors and the proxy calls it saw refused."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.refused: list[str] = []
        page.on("console", self._console)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _response(self, response: Any) -> None:
        if "/api/" in response.url and response.status >= 400:
            self.refused.append(f"{response.status} {response.request.method} {response.url}")


@pytest.fixture
def served(sqlite_database: Database, prefect_gateway: PrefectGateway) -> Iterator[str]:
    app = create_app(settings_with(operators=OPERATOR), sqlite_database, prefect_gateway)
    with serve_in_thread(app) as base:
        yield base.removesuffix("/api/v1")


def _context(browser: Any, root: str, who: Person) -> Any:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=root)
    host = root.split("//", 1)[1].split(":")[0]
    context.add_cookies(
        [{"name": "cshare_session", "value": who.token, "domain": host, "path": "/"}]
    )
    return context


def _run_name(root: str, org: OrgSetup, run: str) -> str:
    r = httpx.get(
        f"{root}/prefect/{org.slug}/api/flow_runs/{run}",
        headers={"Authorization": f"Bearer {org.owner.token}"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["name"])


def test_prefect_ui_in_a_browser(browser: Any, served: str) -> None:  # noqa: F811
    with httpx.Client(base_url=served, timeout=60) as http:
        api = ApiClient(http, None)  # type: ignore[arg-type]
        (org_a, run_a), (org_b, run_b) = _org(api), _org(api)
        admin = org_a.add_member("admin")
        operator = api.signup(OPERATOR)
    name_a, name_b = _run_name(served, org_a, run_a), _run_name(served, org_b, run_b)
    SHOTS.mkdir(parents=True, exist_ok=True)

    context = _context(browser, served, admin)
    page = context.new_page()
    watch = Watch(page)
    page.goto(f"/prefect/{org_a.slug}/runs")
    page.get_by_text(name_a).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "prefect-ui-admin-runs.png"), full_page=True)
    assert page.get_by_text(name_b).count() == 0
    page.goto(f"/prefect/{org_a.slug}/runs/flow-run/{run_a}")
    page.get_by_text(name_a).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "prefect-ui-admin-run.png"), full_page=True)
    csp = [e for e in watch.errors if "Content Security Policy" in e]
    assert not csp, csp
    # Every call the runs and run pages make is one the proxy answers for an admin.
    assert not watch.refused, watch.refused
    context.close()

    context = _context(browser, served, operator)
    page = context.new_page()
    page.goto("/prefect/")
    assert page.url.endswith("/prefect/admin/") or "/prefect/admin/" in page.url
    page.goto("/prefect/admin/runs")
    page.get_by_text(name_a).first.wait_for(timeout=30_000)
    page.get_by_text(name_b).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "prefect-ui-operator-runs.png"), full_page=True)
    context.close()
