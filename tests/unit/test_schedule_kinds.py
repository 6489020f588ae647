"""flows.schedule_kinds: cron, interval and rrule specs, checked, and their fire times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flows.schedule_kinds import ScheduleSpec, fires, validate_spec
from policies.errors import Invalid

NOW = datetime(2026, 3, 27, 10, 0, tzinfo=UTC)  # the Friday before Paris goes to summer time


def test_interval_counts_from_its_anchor_in_its_zone() -> None:
    spec = validate_spec(kind="interval", interval_s=3600, anchor_date=datetime(2026, 1, 1, 0, 30))
    assert fires(spec, NOW, NOW + timedelta(hours=2)) == [
        datetime(2026, 3, 27, 10, 30, tzinfo=UTC),
        datetime(2026, 3, 27, 11, 30, tzinfo=UTC),
    ]
    # `after` is excluded, `until` included.
    assert fires(spec, NOW + timedelta(minutes=30), NOW + timedelta(minutes=90)) == [
        datetime(2026, 3, 27, 11, 30, tzinfo=UTC)
    ]


def test_daily_interval_keeps_the_local_hour_across_dst() -> None:
    spec = validate_spec(
        kind="interval",
        interval_s=86400,
        anchor_date=datetime(2026, 1, 1, 9, 0),
        timezone="Europe/Paris",
    )
    got = fires(spec, NOW, NOW + timedelta(days=3))
    # 09:00 Paris is 08:00 UTC in winter, 07:00 UTC from Sunday 29 March.
    assert got == [
        datetime(2026, 3, 28, 8, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 7, 0, tzinfo=UTC),
    ]


def test_rrule_in_its_zone() -> None:
    spec = validate_spec(
        kind="rrule", rrule="FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0", timezone="Europe/Paris"
    )
    assert fires(spec, NOW, NOW + timedelta(days=10)) == [
        datetime(2026, 3, 30, 7, 0, tzinfo=UTC),
        datetime(2026, 4, 6, 7, 0, tzinfo=UTC),
    ]


def test_cron_still_reads_as_before() -> None:
    spec = validate_spec(cron="*/30 * * * *")
    assert fires(spec, NOW, NOW + timedelta(hours=1)) == [
        NOW + timedelta(minutes=30),
        NOW + timedelta(hours=1),
    ]


@pytest.mark.parametrize(
    ("spec", "body"),
    [
        (
            ScheduleSpec("cron", cron="@daily", timezone="UTC"),
            {"cron": "@daily", "timezone": "UTC"},
        ),
        (
            ScheduleSpec("interval", interval_s=60.0, timezone="UTC"),
            {"interval": 60.0, "anchor_date": "2020-01-01T00:00:00+00:00", "timezone": "UTC"},
        ),
        (
            ScheduleSpec("rrule", rrule="FREQ=DAILY", timezone="Asia/Tokyo"),
            {"rrule": "FREQ=DAILY", "timezone": "Asia/Tokyo"},
        ),
    ],
)
def test_prefect_schedule_bodies(spec: ScheduleSpec, body: dict[str, Any]) -> None:
    assert spec.prefect_schedule() == body


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"kind": "interval", "interval_s": 59}, "interval_s", "at least 60"),
        ({"kind": "interval"}, "interval_s", "at least 60"),
        ({"kind": "interval", "interval_s": float("nan")}, "interval_s", "at least 60"),
        ({"kind": "rrule", "rrule": "FREQ=SOMETIMES"}, "rrule", "not a valid RRule"),
        ({"kind": "cron", "cron": "every day"}, "cron", "not a cron expression"),
        ({"kind": "cron", "cron": "@daily", "rrule": "FREQ=DAILY"}, "rrule", "takes no rrule"),
        ({"kind": "rrule", "rrule": "FREQ=DAILY", "interval_s": 60}, "interval_s", "takes no"),
        ({"kind": "hourly"}, "kind", "Unknown schedule kind"),
        ({"cron": "@daily", "timezone": "Mars/Olympus"}, "timezone", "Unknown time zone"),
    ],
)
def test_invalid_specs_name_the_field(kwargs: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(Invalid) as err:
        validate_spec(**kwargs)
    assert err.value.field == field
    assert words in err.value.detail
