"""What notifications say and who gets them: pure functions, no database or network."""

from __future__ import annotations

import pytest

from orgs.notifications.events import DEFAULT_EVENTS, EVENTS, TEST_EVENT, render, subscribed
from orgs.notifications.preferences import JOB_EMAIL, mails


def test_every_event_renders_with_a_severity() -> None:
    for event in (*EVENTS, TEST_EVENT):
        message = render(event, "acme", {}, "https://cshare.example")
        assert message.title.startswith("[acme] ") and message.body.endswith("\n")
        assert message.severity in ("info", "success", "warning", "failure")


def test_job_message_names_the_job_and_links_to_it() -> None:
    payload = {"job_id": "j-1", "deployment": "train", "user": "ada", "reason": "OOM"}
    message = render("job.crashed", "acme", {**payload, "machine_type": "gpu"}, "https://x/")
    assert message.text == "[acme] Job j-1 (train) of ada crashed: OOM"
    assert "Machine type: gpu" in message.body
    assert message.body.rstrip().endswith("https://x/orgs/acme/jobs/j-1")
    assert message.severity == "failure"
    cancelled = render("job.cancelled", "acme", {**payload, "reason": ""}, "https://x")
    assert cancelled.text == "[acme] Job j-1 (train) of ada was cancelled."


def test_default_events_leave_out_routine_job_ends() -> None:
    assert not subscribed("job.completed", [])
    assert not subscribed("job.cancelled", [])
    assert subscribed("job.failed", []) and subscribed(TEST_EVENT, ["member.left"])
    assert subscribed("job.completed", ["job.completed"])
    assert set(EVENTS) - set(DEFAULT_EVENTS) == {"job.completed", "job.cancelled"}


@pytest.mark.parametrize(
    ("preference", "mailed"),
    [
        ("off", set()),
        ("failures", {"job.failed", "job.crashed"}),
        ("all", {"job.completed", "job.failed", "job.crashed", "job.cancelled"}),
    ],
)
def test_job_email_preference(preference: str, mailed: set[str]) -> None:
    assert preference in JOB_EMAIL
    assert {e for e in EVENTS if mails(preference, e)} == mailed
