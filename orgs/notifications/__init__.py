"""Notifications: per-organization channels, a member's own job e-mails, a durable outbox.

An org admin configures targets (`targets.py`): Slack, Microsoft Teams (a Power Automate
workflow URL) or Discord webhooks and e-mail addresses, sent by apprise
(`channels.py`), or a generic webhook, a JSON envelope signed with the target's secret
and sent by our own small sender (`webhook.py`, which says why not apprise). Each
target subscribes to some of `EVENTS`; without a list it gets `DEFAULT_EVENTS` (all
but `job.completed` and `job.cancelled`, which a channel must ask for).

A member's own mail: when a job ends the ledger emits `job.completed`, `job.failed`,
`job.crashed` or `job.cancelled` with the owner's `user_id`; the owner gets an e-mail
when their preference (`preferences.py`: off, failures = failed and crashed, all;
default failures) asks for it, they have an address, and SMTP is configured
(`CSHARE_SMTP_HOST`, `CSHARE_SMTP_FROM`, ...).

Why an outbox (`outbox.py`): `emit()` only adds rows to the caller's session, so a
notification exists if and only if the change that caused it committed, and a crash or
restart between commit and delivery loses nothing. A background `Deliverer` thread in
every API process (`delivery.py`) claims due rows (a lease on the row, `FOR UPDATE SKIP
LOCKED` on PostgreSQL, so replicas share the work), sends them with short timeouts, and
on failure schedules a retry with exponential backoff and jitter, giving up after
`notifications_max_attempts`. Delivery is at least once: a webhook receiver dedupes on
`X-CShare-Delivery`.

Signing (generic webhooks): `X-CShare-Timestamp: <unix seconds>` and
`X-CShare-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>`.
Binding the timestamp lets a receiver refuse replays older than a few minutes.

Where events come from: the job ledger (`job.*`); the rest see `sources.py`.

Server-side request forgery (`addresses.py`): only http(s), and every address the host
that will be connected to resolves to must be public (no loopback, private, link-local,
metadata, multicast or reserved ranges; loopback only with
`CSHARE_NOTIFICATIONS_ALLOW_LOOPBACK`). The check is made when the target is saved and
again at each delivery. For a chat channel the host is the one apprise will connect to
(fixed by apprise for Slack and Discord, a Microsoft host for Teams); a generic webhook
connects to the very address that was checked (DNS rebinding cannot swap it in
between) and follows no redirects. E-mail goes only to the operator's SMTP server.
"""

from __future__ import annotations

from orgs.notifications.addresses import CheckedUrl, validate_url
from orgs.notifications.channels import smtp_configured
from orgs.notifications.delivery import Deliverer, deliver_due
from orgs.notifications.events import DEFAULT_EVENTS, EVENTS, JOB_EVENTS, TEST_EVENT
from orgs.notifications.models import (
    DELIVERED,
    FAILED,
    PENDING,
    MachineOfflineNotice,
    NotificationOutbox,
    NotificationTarget,
    UserNotificationSettings,
)
from orgs.notifications.outbox import emit, list_deliveries, send_test
from orgs.notifications.preferences import JOB_EMAIL, JobEmail, job_email, set_job_email
from orgs.notifications.sources import member_left, sweep_offline_machines
from orgs.notifications.targets import (
    KINDS,
    MAX_TARGETS,
    Kind,
    TargetSpec,
    events_of,
    list_targets,
    replace_targets,
)
from orgs.notifications.webhook import sign

__all__ = [
    "DEFAULT_EVENTS",
    "DELIVERED",
    "EVENTS",
    "FAILED",
    "JOB_EMAIL",
    "JOB_EVENTS",
    "KINDS",
    "MAX_TARGETS",
    "PENDING",
    "TEST_EVENT",
    "CheckedUrl",
    "Deliverer",
    "JobEmail",
    "Kind",
    "MachineOfflineNotice",
    "NotificationOutbox",
    "NotificationTarget",
    "TargetSpec",
    "UserNotificationSettings",
    "deliver_due",
    "emit",
    "events_of",
    "job_email",
    "list_deliveries",
    "list_targets",
    "member_left",
    "replace_targets",
    "send_test",
    "set_job_email",
    "sign",
    "smtp_configured",
    "sweep_offline_machines",
    "validate_url",
]
