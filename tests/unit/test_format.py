"""The quantities people read (api/format.py), shared by the CLI and the web console."""

from __future__ import annotations

import pytest

from api import format as fmt


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "—"),
        (-5, "0 s"),
        (0, "0 s"),
        (45.4, "45 s"),
        (59.6, "1 min"),
        (120, "2 min"),  # the bug: two minutes read "0.0 h"
        (29 * 60 + 29, "29 min"),
        (3569, "59 min"),
        (3570, "1 h 00 min"),
        (3600 + 5 * 60, "1 h 05 min"),
        (5.5 * 3600, "5 h 30 min"),
        (99 * 3600 + 59 * 60, "99 h 59 min"),
        (100 * 3600, "100 h"),
        (1234.4 * 3600, "1,234 h"),
    ],
)
def test_duration(seconds: float | None, shown: str) -> None:
    assert fmt.duration(seconds) == shown


@pytest.mark.parametrize(
    ("mb", "shown"),
    [
        (None, "—"),
        (512, "0.5 GiB"),
        (1024, "1.0 GiB"),
        (24104, "23.5 GiB"),  # MemTotal 24683520 kB, as agents.hardware reports it
        (2_097_152, "2,048.0 GiB"),
    ],
)
def test_memory(mb: float | None, shown: str) -> None:
    assert fmt.memory_mb(mb) == shown
