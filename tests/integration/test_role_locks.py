"""The advisory lock that keeps a second `cshare services` on standby
(api.cli.roles.services.ServicesLock), on the real PostgreSQL."""

from __future__ import annotations

import time

import pytest

from api.cli.roles.prefect_db import is_postgres, plain_dsn
from api.cli.roles.services import ServicesLock

pytestmark = pytest.mark.postgres


def test_one_holder_at_a_time_and_a_standby_takes_over(pg_server_url: str) -> None:
    # The form Prefect's settings use; the lock connection drops the async driver.
    url = pg_server_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    assert is_postgres(url) and plain_dsn(url).startswith("postgresql://")
    first, second = ServicesLock(url), ServicesLock(url)
    try:
        assert first.try_take()
        assert first.try_take()  # re-entrant for its holder
        assert not second.try_take()
        assert first.alive()
        first.close()  # the holder's connection ends (a killed process's would too)
        assert not first.alive()
        # The server ends the closed session's backend (and its locks) a moment later:
        # a standby retries, as `cshare services` does every 2 s.
        deadline = time.monotonic() + 15
        while not second.try_take():
            assert time.monotonic() < deadline, "the lock outlived its holder's connection"
            time.sleep(0.2)
    finally:
        first.close()
        second.close()


def test_sqlite_urls_are_not_postgres() -> None:
    assert not is_postgres("sqlite+aiosqlite:///tmp/prefect.db")
