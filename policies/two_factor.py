"""Two-factor rules: when an organization turns a member away, when a session counts as
having passed two-factor "recently", and which TOTP time steps a code may match.

Pure functions; `orgs.two_factor` holds the state they decide on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

# A personal token is minted only by a session that passed two-factor this recently
# (the GitHub "sudo mode" idea: a stolen, older session cookie cannot mint tokens).
RECENT_SECOND_FACTOR = timedelta(minutes=10)

# Codes from one step before or after the current one are accepted (clock drift, and
# the seconds it takes to type a code), never older ones.
DRIFT_STEPS = 1


def org_requires_two_factor(settings_document: Mapping[str, Any]) -> bool:
    """Whether the org's settings document (`security.require_2fa`) asks for 2FA."""
    security = settings_document.get("security")
    return isinstance(security, Mapping) and security.get("require_2fa") is True


def blocks_member(*, org_requires: bool, enrolled: bool) -> bool:
    """A person (not a machine, not a job's credential) is turned away from the org."""
    return org_requires and not enrolled


def blocked_sentence(org_name: str) -> str:
    return (
        f"Enable two-factor authentication to access {org_name}: the organization requires "
        "it (`cshare account 2fa enable`, or your profile page in the console)."
    )


def passed_recently(passed_at: datetime | None, now: datetime) -> bool:
    return passed_at is not None and now - passed_at <= RECENT_SECOND_FACTOR


def candidate_steps(current_step: int, last_used_step: int) -> list[int]:
    """The time steps a code may be checked against, oldest first: within the drift,
    and after the last step already used (a code is never accepted twice)."""
    return [
        step
        for step in range(current_step - DRIFT_STEPS, current_step + DRIFT_STEPS + 1)
        if step > last_used_step
    ]
