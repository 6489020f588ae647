"""Tags, metric charts and compare in a real browser (Debian's headless Chromium, as in
test_web_browser.py): a member opens a job that logged two metric series and saved an
output, reads the chart (an SVG image with a title and description) and the latest
values, adds and removes tags (mouse and keyboard), filters the job list by tag, ticks
two jobs and compares them: overlaid lines per metric, the parameter that differs marked.

Screenshots at 1280 px in artifacts/screenshots/ (tracking-*.png); every form control
must have a label. With CSHARE_SCREENSHOTS=<dir> the job page and the compare page are
also saved there as job-metrics.png and compare.png.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from flows.models import Job
from orgs.config import get_settings
from orgs.db import Database
from orgs.migrate import upgrade
from tests.e2e.test_web_browser import browser
from tests.e2e.test_web_profile_browser import as_person, shot
from tests.integration.test_datasets import (
    World,
    as_job,
    create,
    job_token,
    make_job,
    upload_as_job,
)
from tests.support import ApiClient, serve_in_thread

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the shared `browser` fixture skips without it
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared

STEPS = 60


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, ApiClient]]:
    db = Database(f"sqlite:///{tmp_path / 'cshare.db'}")
    upgrade(db.engine)
    settings = get_settings().model_copy(
        update={
            "notifications_enabled": False,
            "dispatcher_enabled": False,
            "dataset_dir": tmp_path / "datasets",
        }
    )
    app = create_app(settings, db)
    with serve_in_thread(app) as url, TestClient(app, raise_server_exceptions=False) as client:
        yield url.removesuffix("/api/v1"), ApiClient(client, db)
    db.dispose()


def training_job(api: ApiClient, w: World, lr: float, tags: list[str]) -> Job:
    """A job that ran a small training loop: loss and accuracy over steps, logged with
    its own token as `log_metadata(step=i, loss=..., accuracy=...)` does."""
    job = make_job(api.db, w.slug, w.alice.id, state="running")
    with api.db.transaction() as s:
        row = s.get(Job, job.id)
        assert row is not None
        row.parameters = {"lr": lr, "epochs": STEPS, "batch_size": 64}
        row.tags = tags
    token = job_token(api.db, job)
    url = f"/api/v1/orgs/{w.slug}/jobs/{job.id}/metadata"
    for step in range(STEPS):
        loss = 2.2 * math.exp(-step * lr * 4) + 0.08 + 0.03 * math.sin(step / 2)
        accuracy = min(0.99, 1 - loss / 2.5)
        body = {"step": step, "values": {"loss": round(loss, 4), "accuracy": round(accuracy, 4)}}
        r = api.client.post(url, headers=as_job(token), json=body)
        assert r.status_code == 200, r.text
    r = api.client.post(url, headers=as_job(token), json={"values": {"dataset": "cifar-10"}})
    assert r.status_code == 200, r.text
    return job


def save_copy(page: Any, name: str) -> None:
    target = os.environ.get("CSHARE_SCREENSHOTS", "").strip()
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / name), full_page=True)


def test_chart_tags_and_compare(browser: Any, site: tuple[str, ApiClient]) -> None:
    base, api = site
    owner, alice = api.signup("olivia"), api.signup("ada")
    slug = api.create_org(owner, name=f"Acme Research {uuid.uuid4().hex[:4]}")
    api.add_member(slug, owner, alice)
    w = World(slug, owner, owner, alice, alice)
    fast = training_job(api, w, 0.05, ["draft", "resnet"])
    slow = training_job(api, w, 0.02, ["resnet"])
    create(api, w, alice, "models")
    r = upload_as_job(api, w, job_token(api.db, fast), "models", b"model weights " * 1000)
    assert r.status_code == 201, r.text

    page = as_person(browser, base, alice).new_page()
    page.goto(f"{base}/orgs/{slug}/jobs/{fast.id}")
    chart = page.get_by_role("img", name="loss over steps")
    expect(chart).to_be_visible()
    assert "60 points from step 0 to 59" in (chart.locator("desc").text_content() or "")
    expect(page.get_by_role("img", name="accuracy over steps")).to_be_visible()
    metrics = page.locator("table.metrics")
    expect(metrics.get_by_role("row", name=re.compile(r"^loss"))).to_contain_text("59")
    expect(metrics).not_to_contain_text("cifar-10")  # text metadata: not a metric
    download = page.get_by_role("link", name="Download models v1")
    expect(download).to_have_attribute("href", f"/orgs/{slug}/datasets/models/versions/1/download")
    shot(page, "tracking-01-job-metrics")
    save_copy(page, "job-metrics.png")

    # Tags: add with the mouse, remove with the keyboard.
    page.get_by_label("Add tags").fill("best, baseline")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Tags saved")
    tags = page.get_by_role("list", name="Tags of this job")
    expect(tags).to_contain_text("best")
    page.get_by_role("button", name="Remove tag draft").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Tags saved")
    expect(tags).not_to_contain_text("draft")
    assert api.get(f"/orgs/{slug}/jobs/{fast.id}", alice).json()["tags"] == [
        "resnet",
        "best",
        "baseline",
    ]
    shot(page, "tracking-02-tags")

    # The list: filter by tag, then tick two jobs and compare.
    page.goto(f"{base}/orgs/{slug}/jobs")
    page.get_by_label("Tags").fill("best")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.jobs tbody tr")).to_have_count(1)
    page.goto(f"{base}/orgs/{slug}/jobs?tag=resnet")
    expect(page.locator("table.jobs tbody tr")).to_have_count(2)
    page.get_by_label(f"Select job {str(fast.id)[:8]} to compare").check()
    page.get_by_label(f"Select job {str(slow.id)[:8]} to compare").check()
    shot(page, "tracking-03-job-list")
    page.get_by_role("button", name="Compare selected").click()
    expect(page).to_have_url(re.compile(r"/jobs/compare\?ids="))
    loss = page.get_by_role("img", name="loss over steps, by job")
    expect(loss).to_be_visible()
    expect(loss.locator("polyline.chart-line")).to_have_count(2)
    expect(page.locator("tr.differs")).to_have_count(1)
    expect(page.locator("tr.differs")).to_contain_text("lr")
    shot(page, "tracking-04-compare")
    save_copy(page, "compare.png")
