"""The web console in a real browser: Debian's headless Chromium driven by Playwright.

One story on one server (the app under uvicorn on 127.0.0.1, a fake Prefect so jobs can
be submitted, a real agent process for the machine), in order:

1. the owner signs up and creates an organization;
2. a second person (another browser context) opens the invitation link, signs up on the
   way, comes back to the invitation and joins;
3. the member sees no admin controls, and forged posts to admin actions are refused;
4. a real `cshare agent start` registers the member's machine, pending; the owner
   approves it on the Machines page and the agent starts working;
5. an invalid limits document shows the policy's error beside the offending key;
6. a dataset uploaded through the page (streamed, with a progress bar) downloads
   byte for byte;
7. jobs, a job's page and the audit log render; the layout holds at phone width;
8. deleting the organization needs its exact name.

Every page is saved as a screenshot at 1280 px in artifacts/screenshots/.
Chromium comes from Debian (`apt-get install chromium`, done by .ci/run); nothing is
downloaded at test time. Without it the module skips, except under CI=true.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from orgs.config import get_settings
from orgs.db import Database
from orgs.migrate import upgrade
from orgs.models import Machine, Organization
from tests.integration.test_jobs_support import FakePrefect
from tests.prefect_server import REPO_ROOT
from tests.support import serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

CHROMIUM = os.environ.get("CSHARE_CHROMIUM") or shutil.which("chromium") or ""
IN_CI = os.environ.get("CI", "").lower() == "true"
SHOTS = REPO_ROOT / "artifacts" / "screenshots"
CSHARE = str(Path(sys.executable).parent / "cshare")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ORG_NAME = "Acme Research"
# Form controls (hidden ones aside) with neither a <label> nor an aria-label, and buttons
# and links without an accessible text.
UNLABELLED_CONTROLS = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden') continue;
    if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) bad.push(el.outerHTML);
  }
  for (const el of document.querySelectorAll('button, a[href], summary')) {
    if (!el.textContent.trim() && !el.getAttribute('aria-label')) bad.push(el.outerHTML);
  }
  return bad.slice(0, 5);
}"""
PASSWORD = "correct-horse-battery"

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - playwright is a dev dependency
    sync_playwright = None  # type: ignore[assignment]


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@dataclass
class Story:
    base: str
    db: Database
    home: Path
    browser: Any
    owner: Any = None  # BrowserContext
    member: Any = None
    slug: str = ""
    agent: subprocess.Popen[bytes] | None = None
    shots: list[str] = field(default_factory=list)

    def page(self, context: Any) -> Any:
        pages = context.pages
        return pages[0] if pages else context.new_page()

    def shot(self, page: Any, name: str) -> None:
        """Save the page at 1280 px, and check that every form control has a label."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = str(SHOTS / f"{name}.png")
        try:
            page.screenshot(path=path, full_page=True)
        except PlaywrightError:  # Chromium under load now and then fails one capture
            time.sleep(1.0)
            page.screenshot(path=path, full_page=True)
        self.shots.append(name)
        unlabelled = page.evaluate(UNLABELLED_CONTROLS)
        assert not unlabelled, f"{name}: controls without a label: {unlabelled}"

    def token_of(self, context: Any) -> str:
        cookie = next(c for c in context.cookies() if c["name"] == "cshare_session")
        return str(cookie["value"])

    def api(self, context: Any, method: str, path: str, **kw: Any) -> httpx.Response:
        """The REST API with the same person's session token (for setting up jobs)."""
        headers = {"Authorization": f"Bearer {self.token_of(context)}"}
        return httpx.request(method, f"{self.base}/api/v1{path}", headers=headers, **kw)

    def org_exists(self) -> bool:
        with self.db.session(write=False) as s:
            return (
                s.scalar(select(Organization.id).where(Organization.slug == self.slug)) is not None
            )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM or not Path(CHROMIUM).exists():
        message = (
            "Chromium is not installed: `apt-get install -y chromium` (Debian's package; "
            "Playwright's own browser download is not used)"
        )
        if IN_CI:
            pytest.fail(message + " (CI=true requires it)")
        pytest.skip(message)
    # CI runs this beside another pytest worker on two cores: allow slow assertions.
    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def story(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    home = tmp_path_factory.mktemp("web-e2e")
    db = Database(f"sqlite:///{home / 'cshare.db'}")
    upgrade(db.engine)
    settings = get_settings().model_copy(
        update={
            "dataset_dir": home / "datasets",
            "dataset_fsync": False,
            "notifications_enabled": False,
            "dispatcher_enabled": False,
            "agent_heartbeat_interval_s": 0.5,
        }
    )
    gateway: Any = FakePrefect()  # jobs can be submitted without a Prefect server
    app = create_app(settings, db, gateway)
    with serve_in_thread(app) as url:
        base = url.removesuffix("/api/v1")
        # The port is known only now; invitation links and the agent command use it.
        settings.public_url = base
        s = Story(base=base, db=db, home=home, browser=browser)
        try:
            yield s
        finally:
            if s.agent is not None and s.agent.poll() is None:
                s.agent.send_signal(signal.SIGTERM)
                try:
                    s.agent.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    s.agent.kill()
            for context in (s.owner, s.member):
                if context is not None:
                    context.close()
    db.dispose()


def _signup(page: Any, name: str) -> None:
    page.get_by_label("Email").fill(f"{name}@example.test")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()


def _csrf(page: Any) -> str:
    return str(page.locator('input[name="csrf_token"]').first.get_attribute("value"))


# --------------------------------------------------------------------------- the story


def step_owner_signs_up_and_creates_an_org(story: Story) -> None:
    story.owner = story.browser.new_context(viewport=DESKTOP)
    page = story.page(story.owner)
    page.goto(story.base + "/")
    expect(page).to_have_url(re.compile(r"/login$"))
    story.shot(page, "01-sign-in")
    page.get_by_role("link", name="Create an account").click()
    story.shot(page, "02-sign-up")
    _signup(page, "olivia")
    expect(page).to_have_url(re.compile(r"/welcome$"))
    expect(page.get_by_role("heading", name="Create new organization")).to_be_visible()
    story.shot(page, "03-first-sign-in")
    page.get_by_label("Name", exact=True).fill(ORG_NAME)
    page.get_by_label("Description").fill("GPU pool of the research group")
    page.get_by_role("button", name="Create organization").click()
    expect(page).to_have_url(re.compile(r"/orgs/acme-research"))
    story.slug = "acme-research"
    expect(page.get_by_role("heading", name=ORG_NAME)).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("You are its owner")


def step_member_joins_through_the_invitation_link(story: Story) -> None:
    owner = story.page(story.owner)
    owner.get_by_role("link", name="Members").click()
    owner.get_by_label("Role", exact=True).select_option("member")
    owner.get_by_label("Max uses").fill("1")
    owner.get_by_role("button", name="Create invitation").click()
    link = owner.get_by_label("Invitation link").input_value()
    assert link.startswith(story.base + "/invitations/cs_i_")
    story.shot(owner, "05-members-invitation-created")

    story.member = story.browser.new_context(viewport=DESKTOP)
    member = story.page(story.member)
    member.goto(link)
    # Not signed in: sign-in first, remembering where to come back to.
    expect(member).to_have_url(re.compile(r"/login\?next=(/|%2F)invitations(/|%2F)"))
    expect(member.get_by_text("to accept your invitation")).to_be_visible()
    member.get_by_role("link", name="Create an account").click()
    _signup(member, "marco")
    expect(member).to_have_url(link)
    expect(member.get_by_role("heading", name=f"Join {ORG_NAME}")).to_be_visible()
    story.shot(member, "06-invitation")
    member.get_by_role("button", name="Join organization").click()
    expect(member).to_have_url(re.compile(rf"/orgs/{story.slug}"))
    expect(member.get_by_role("status")).to_contain_text("You joined")
    expect(member.get_by_text("You are member here.")).to_be_visible()


def step_member_sees_no_admin_controls_and_forged_posts_are_refused(story: Story) -> None:
    member = story.page(story.member)
    nav = member.get_by_role("navigation", name="Organization")
    expect(nav.get_by_role("link", name="Settings")).to_have_count(0)
    expect(nav.get_by_role("link", name="Audit log")).to_have_count(0)
    # No usage chart (admins only) on the member's dashboard.
    expect(member.get_by_text("Compute time per user")).to_have_count(0)
    story.shot(member, "07-dashboard-member")
    member.get_by_role("link", name="Members").click()
    expect(member.get_by_text("Invite Member")).to_have_count(0)
    expect(
        member.get_by_role("button", name=re.compile("Change role|Remove|Revoke"))
    ).to_have_count(0)
    story.shot(member, "08-members-as-member")

    token = _csrf(member)  # a valid token of the member's own session
    org = f"{story.base}/orgs/{story.slug}"
    forged = {
        "/settings/delete": {"confirm": ORG_NAME},
        "/settings/limits": {"mode": "yaml", "yaml": "organization: {}"},
        "/invitations": {"role": "admin"},
        "/settings/machines": {"offline_after_s": "60"},
    }
    for path, form in forged.items():
        answer = member.request.post(org + path, form={**form, "csrf_token": token})
        assert answer.status == 403, (path, answer.status)
    # Without the token even an allowed action is refused.
    answer = member.request.post(org + "/leave", form={"confirm": "yes"})
    assert answer.status == 403
    page_answer = member.goto(org + "/settings")
    assert page_answer is not None and page_answer.status == 403
    expect(member.get_by_role("heading", name="Not allowed")).to_be_visible()
    assert story.org_exists()


def step_admin_approves_a_machine_registered_by_a_real_agent(story: Story) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSHARE_", "PREFECT_"))}
    env.update(
        CSHARE_API_URL=story.base,
        CSHARE_TOKEN=story.token_of(story.member),
        CSHARE_CONFIG=str(story.home / "cli.toml"),
        CSHARE_AGENT_HOME=str(story.home / "agent"),
        PREFECT_HOME=str(story.home / "prefect"),
    )
    log = (story.home / "agent.log").open("ab")
    story.agent = subprocess.Popen(
        [CSHARE, "agent", "start", "--org", story.slug, "--name", "lab-box-1", "--slots", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=story.home,
    )

    def registered() -> Machine | None:
        assert story.agent is not None and story.agent.poll() is None, _tail(story.home)
        with story.db.session(write=False) as s:
            return s.scalars(select(Machine).where(Machine.name == "lab-box-1")).first()

    machine = wait_for("the agent to register its machine", registered, 60)
    assert machine.status == "pending"
    owner = story.page(story.owner)
    owner.goto(f"{story.base}/orgs/{story.slug}/machines")
    row = owner.locator('tr[data-machine="lab-box-1"]')
    expect(row).to_contain_text("pending")
    expect(row).to_contain_text("marco")
    expect(owner.locator("#cmd-agent")).to_have_text(
        f"cshare agent start --org {story.slug} --machine-type cpu --slots 1"
    )
    story.shot(owner, "09-machines-pending")
    # The member sees the machine but no approve button.
    member = story.page(story.member)
    member.goto(f"{story.base}/orgs/{story.slug}/machines")
    expect(member.locator('tr[data-machine="lab-box-1"]')).to_be_visible()
    expect(member.get_by_role("button", name=re.compile("Approve"))).to_have_count(0)
    # A forged approve from the member is refused by the server.
    answer = member.request.post(
        f"{story.base}/orgs/{story.slug}/machines/{machine.id}/approve",
        form={"csrf_token": _csrf(member)},
    )
    assert answer.status == 403

    row.get_by_role("button", name="Approve lab-box-1").click()
    expect(owner.get_by_role("status")).to_contain_text("Machine approved")
    expect(owner.locator('tr[data-machine="lab-box-1"]')).to_contain_text("approved")
    wait_for(
        "the agent to learn it is approved",
        lambda: "is approved" in (story.home / "agent.log").read_text(errors="replace"),
        30,
    )

    # Online: its agent heartbeats (the table also refreshes itself every 10 s).
    def online() -> bool:
        owner.reload()
        return "online" in owner.locator('tr[data-machine="lab-box-1"]').inner_text()

    wait_for("the machine to show online", online, 30, every=1.0)
    story.shot(owner, "10-machines-approved")
    story.agent.send_signal(signal.SIGTERM)
    story.agent.wait(timeout=30)


def _tail(home: Path) -> str:
    path = home / "agent.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no agent log)"


def step_an_invalid_limits_document_shows_the_error_beside_the_key(story: Story) -> None:
    owner = story.page(story.owner)
    owner.goto(f"{story.base}/orgs/{story.slug}/settings")
    story.shot(owner, "11-settings")
    owner.get_by_label("max_job_runtime").fill("-5")
    owner.get_by_role("button", name="Save limits").click()
    field_box = owner.locator('[data-key="organization.limits.max_job_runtime"]')
    error = field_box.locator(".field-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("max_job_runtime must be a positive integer")
    expect(owner.get_by_label("max_job_runtime")).to_have_attribute("aria-invalid", "true")
    # The other keys carry no error.
    assert owner.locator(".limit-field .field-error").count() == 1
    error.scroll_into_view_if_needed()
    story.shot(owner, "12-settings-limits-error")
    # A valid value saves.
    owner.get_by_label("max_job_runtime").fill("7200")
    owner.get_by_role("button", name="Save limits").click()
    expect(owner.get_by_role("status")).to_contain_text("Settings saved")
    expect(owner.get_by_label("max_job_runtime")).to_have_value("7200")


def step_a_dataset_uploaded_through_the_page_downloads_identical_bytes(story: Story) -> None:
    owner = story.page(story.owner)
    owner.goto(f"{story.base}/orgs/{story.slug}/datasets")
    story.shot(owner, "13-datasets-empty")
    owner.get_by_label("Name", exact=True).fill("training-images")
    owner.get_by_label("Description").fill("Labelled images, batch 1")
    owner.get_by_role("button", name="Create dataset").click()
    expect(owner).to_have_url(re.compile(r"/datasets/training-images"))
    payload = secrets.token_bytes(3 * 1024 * 1024 + 17)
    source = story.home / "images.bin"
    source.write_bytes(payload)
    owner.get_by_label("File").set_input_files(str(source))
    owner.get_by_role("button", name="Upload").click()
    expect(owner.locator(".upload-status")).to_contain_text("Uploaded as version 1", timeout=30_000)
    expect(owner.locator("#upload-bar")).to_have_attribute("value", "100")
    owner.wait_for_load_state()
    expect(owner.locator("table.versions")).to_contain_text("images.bin", timeout=10_000)
    story.shot(owner, "14-dataset-detail")
    with owner.expect_download() as info:
        owner.get_by_role("link", name="Download v1").click()
    downloaded = Path(info.value.path())
    assert downloaded.read_bytes() == payload
    owner.goto(f"{story.base}/orgs/{story.slug}/datasets")
    expect(owner.locator("table")).to_contain_text("3.0 MB")
    story.shot(owner, "15-datasets")


def step_jobs_job_page_audit_and_phone_layout(story: Story) -> None:
    r = story.api(
        story.owner,
        "POST",
        f"/orgs/{story.slug}/deployments",
        json={
            "name": "train",
            "entrypoint": "flows/library/train.py:train",
            "path": str(REPO_ROOT),
            "machine_type": "cpu",
        },
    )
    assert r.status_code in (200, 201), r.text
    ids = []
    for who, params in ((story.member, {"epochs": 3}), (story.owner, {"epochs": 10})):
        r = story.api(
            who,
            "POST",
            f"/orgs/{story.slug}/jobs",
            json={"deployment": "train", "parameters": params},
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    owner = story.page(story.owner)
    owner.goto(f"{story.base}/orgs/{story.slug}/jobs")
    expect(owner.locator("table.jobs tbody tr")).to_have_count(2)
    story.shot(owner, "16-jobs")
    owner.goto(f"{story.base}/orgs/{story.slug}/jobs/{ids[0]}")
    expect(owner.get_by_role("heading", name="Parameters")).to_be_visible()
    expect(owner.locator("#job-logs")).to_contain_text("No log lines")
    story.shot(owner, "17-job")
    # Destructive buttons ask first: dismissing keeps the job, accepting cancels it.
    owner.once("dialog", lambda dialog: dialog.dismiss())
    owner.get_by_role("button", name="Cancel job").click()
    expect(owner.get_by_role("button", name="Cancel job")).to_be_visible()
    owner.once("dialog", lambda dialog: dialog.accept())
    owner.get_by_role("button", name="Cancel job").click()
    expect(owner.get_by_role("status")).to_contain_text("Cancellation requested")
    # The member sees only their own job.
    member = story.page(story.member)
    member.goto(f"{story.base}/orgs/{story.slug}/jobs")
    expect(member.locator("table.jobs tbody tr")).to_have_count(1)
    answer = member.goto(f"{story.base}/orgs/{story.slug}/jobs/{ids[1]}")
    assert answer is not None and answer.status == 404
    owner.goto(f"{story.base}/orgs/{story.slug}/audit")
    expect(owner.locator("table.audit")).to_contain_text("machine.approved")
    story.shot(owner, "18-audit")
    owner.goto(f"{story.base}/orgs/{story.slug}")
    expect(owner.get_by_role("heading", name="Compute time per user, last 30 days")).to_be_visible()
    story.shot(owner, "04-dashboard-owner")

    phone = story.browser.new_context(viewport=PHONE, storage_state=story.owner.storage_state())
    try:
        small = phone.new_page()
        for path, name in (("", "dashboard"), ("/machines", "machines"), ("/settings", "settings")):
            small.goto(f"{story.base}/orgs/{story.slug}{path}")
            SHOTS.mkdir(parents=True, exist_ok=True)
            small.screenshot(path=str(SHOTS / f"phone-{name}.png"), full_page=True)
            overflow = small.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, f"{name} scrolls sideways at phone width by {overflow}px"
    finally:
        phone.close()


def step_sign_in_works_with_the_keyboard_alone(story: Story) -> None:
    context = story.browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(story.base + "/login")
        # The email field has focus on arrival (waited for: on a loaded machine the
        # browser applies `autofocus` after the load event); Tab moves on; Enter submits.
        expect(page.locator("#email")).to_be_focused()
        page.keyboard.type("olivia@example.test")
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(rf"/orgs/{story.slug}"))
    finally:
        context.close()


def step_deleting_the_org_needs_its_exact_name(story: Story) -> None:
    owner = story.page(story.owner)
    owner.goto(f"{story.base}/orgs/{story.slug}/settings")
    zone = owner.locator("#danger-zone")
    zone.get_by_label(re.compile("Type the organization name")).fill("Acme")
    zone.get_by_role("button", name="Delete this organization").click()
    error = owner.locator("#delete-confirm-error")
    expect(error).to_contain_text("exact name")
    assert story.org_exists()
    owner.locator("#danger-zone").scroll_into_view_if_needed()
    story.shot(owner, "19-danger-zone-wrong-name")
    owner.locator("#danger-zone").get_by_label(re.compile("Type the organization name")).fill(
        ORG_NAME
    )
    owner.locator("#danger-zone").get_by_role("button", name="Delete this organization").click()
    expect(owner).to_have_url(re.compile(r"/welcome"))
    assert not story.org_exists()
    story.shot(owner, "20-after-delete")
    expect(owner.get_by_role("status")).to_contain_text("organization was deleted")


# The steps build on each other (one server, one organization), so they run as one test:
# pytest-xdist may hand a module's tests to different workers (each with its own server).
STEPS = (
    step_owner_signs_up_and_creates_an_org,
    step_member_joins_through_the_invitation_link,
    step_member_sees_no_admin_controls_and_forged_posts_are_refused,
    step_admin_approves_a_machine_registered_by_a_real_agent,
    step_an_invalid_limits_document_shows_the_error_beside_the_key,
    step_a_dataset_uploaded_through_the_page_downloads_identical_bytes,
    step_jobs_job_page_audit_and_phone_layout,
    step_sign_in_works_with_the_keyboard_alone,
    step_deleting_the_org_needs_its_exact_name,
)


@pytest.mark.timeout(600)
def test_the_web_console_in_a_real_browser(story: Story) -> None:
    for step in STEPS:
        step(story)
