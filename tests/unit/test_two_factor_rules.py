"""The pure two-factor rules (policies.two_factor)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from policies.two_factor import (
    blocks_member,
    candidate_steps,
    org_requires_two_factor,
    passed_recently,
)


def test_which_steps_a_code_may_match() -> None:
    # One step of drift either way, never a step already used (nor one before it).
    assert candidate_steps(100, 0) == [99, 100, 101]
    assert candidate_steps(100, 99) == [100, 101]
    assert candidate_steps(100, 100) == [101]
    assert candidate_steps(100, 101) == []


def test_the_org_setting_and_who_it_blocks() -> None:
    assert org_requires_two_factor({"security": {"require_2fa": True}})
    docs: list[dict[str, Any]] = [
        {},
        {"security": {}},
        {"security": {"require_2fa": "true"}},
        {"security": 1},
    ]
    for doc in docs:
        assert not org_requires_two_factor(doc)
    assert blocks_member(org_requires=True, enrolled=False)
    assert not blocks_member(org_requires=True, enrolled=True)
    assert not blocks_member(org_requires=False, enrolled=False)


def test_recent_means_ten_minutes() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert passed_recently(now - timedelta(minutes=10), now)
    assert not passed_recently(now - timedelta(minutes=10, seconds=1), now)
    assert not passed_recently(None, now)
