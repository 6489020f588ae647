"""A user's own notifications: "e-mail me when my job ends" (off, failures, all)."""

from __future__ import annotations

import uuid
from typing import Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from orgs.models import User
from orgs.notifications.events import JOB_EVENTS
from orgs.notifications.models import UserNotificationSettings
from policies.errors import Invalid

JobEmail = Literal["off", "failures", "all"]
JOB_EMAIL: Final[tuple[JobEmail, ...]] = ("off", "failures", "all")
DEFAULT_JOB_EMAIL: Final[JobEmail] = "failures"
_MAILED: Final[dict[str, tuple[str, ...]]] = {
    "off": (),
    "failures": ("job.failed", "job.crashed"),
    "all": JOB_EVENTS,
}


def job_email(session: Session, user_id: uuid.UUID) -> JobEmail:
    with session.no_autoflush:
        stored = session.scalar(
            select(UserNotificationSettings.job_email).where(
                UserNotificationSettings.user_id == user_id
            )
        )
    return stored if stored in JOB_EMAIL else DEFAULT_JOB_EMAIL


def mails(preference: str, event: str) -> bool:
    """Whether a user with this preference gets a mail about their job's `event`."""
    return event in _MAILED.get(preference, ())


def set_job_email(session: Session, user: User, value: str) -> JobEmail:
    """Store the user's choice; commits."""
    if value not in JOB_EMAIL:
        raise Invalid(f"job_email must be one of {', '.join(JOB_EMAIL)}.", field="job_email")
    row = session.get(UserNotificationSettings, user.id)
    if row is None:
        session.add(UserNotificationSettings(user_id=user.id, job_email=value))
    else:
        row.job_email = value
    session.commit()
    return value
