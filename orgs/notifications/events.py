"""The events a notification can be about, and what a message about each one says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

JOB_EVENTS: Final[tuple[str, ...]] = ("job.completed", "job.failed", "job.crashed", "job.cancelled")
EVENTS: Final[tuple[str, ...]] = (
    *JOB_EVENTS,
    "machine.pending_approval",
    "machine.offline",
    "member.joined",
    "member.left",
    "join_request.created",
)
# Mailed to the one user the payload names (`user_id`), never to an org's targets: the
# answer to their own request to rejoin (orgs.join_requests).
USER_EVENTS: Final[tuple[str, ...]] = ("join_request.approved", "join_request.denied")
# What a target without a list of events receives: everything but the routine ends of
# jobs (a channel would drown in them), which a target must ask for by name.
DEFAULT_EVENTS: Final[tuple[str, ...]] = tuple(
    e for e in EVENTS if e not in ("job.completed", "job.cancelled")
)
TEST_EVENT: Final = "notification.test"

_TEXT: Final[dict[str, str]] = {
    "job.completed": "Job {job_id} ({deployment}) of {user} completed.",
    "job.failed": "Job {job_id} ({deployment}) of {user} failed: {reason}",
    "job.crashed": "Job {job_id} ({deployment}) of {user} crashed: {reason}",
    "job.cancelled": "Job {job_id} ({deployment}) of {user} was cancelled: {reason}",
    "machine.pending_approval": "Machine {name} ({machine_type}) of {owner} awaits approval.",
    "machine.offline": "Machine {name} ({machine_type}) of {owner} is offline "
    "(last heartbeat {last_heartbeat_at}).",
    "member.joined": "{name} joined as {role}.",
    "member.left": "{name} left the organization.",
    "join_request.created": "{name} asks to rejoin the organization.",
    "join_request.approved": "Your request to rejoin {org_name} was approved: you are {role}.",
    "join_request.denied": "Your request to rejoin {org_name} was denied.",
    TEST_EVENT: "{message}",
}
# Shown under the headline of an e-mail, in this order, when present.
_DETAILS: Final = (
    ("job_id", "Job"),
    ("deployment", "Deployment"),
    ("state", "State"),
    ("reason", "Reason"),
    ("machine_type", "Machine type"),
    ("user", "Submitted by"),
    ("note", "Note"),
    ("contact_email", "Contact"),
)


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


_SEVERITY: Final = {
    "job.completed": "success",
    "job.failed": "failure",
    "job.crashed": "failure",
    "job.cancelled": "warning",
    "machine.offline": "warning",
}


@dataclass(frozen=True, slots=True)
class Message:
    title: str  # an e-mail's subject
    text: str  # the one line a chat channel shows
    body: str  # an e-mail's body: the line, the details, a link
    severity: str  # info, success, warning or failure (a chat message's colour)


def subscribed(event: str, events: list[str] | None) -> bool:
    """Whether a target with this list of events (empty: the default set) gets `event`."""
    return event == TEST_EVENT or event in (events or DEFAULT_EVENTS)


def render(event: str, org_slug: str, payload: dict[str, Any], public_url: str) -> Message:
    values = _Blank({k: v for k, v in payload.items() if v not in (None, "")})
    if event == "job.cancelled" and "reason" not in values:
        headline = "Job {job_id} ({deployment}) of {user} was cancelled.".format_map(values)
    else:
        headline = _TEXT.get(event, event).format_map(values)
    lines = [headline, ""]
    lines += [f"{label}: {values[key]}" for key, label in _DETAILS if key in values]
    if event in JOB_EVENTS and "job_id" in values:
        lines += ["", f"{public_url.rstrip('/')}/orgs/{org_slug}/jobs/{values['job_id']}"]
    elif event == "join_request.approved":
        lines += ["", f"{public_url.rstrip('/')}/orgs/{org_slug}"]
    elif event == "join_request.created":
        lines += ["", f"{public_url.rstrip('/')}/orgs/{org_slug}/members"]
    return Message(
        title=f"[{org_slug}] {headline}",
        text=f"[{org_slug}] {headline}",
        body="\n".join(lines).strip() + "\n",
        severity=_SEVERITY.get(event, "info"),
    )
