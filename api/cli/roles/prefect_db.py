"""Prefect's database made ready once, under a PostgreSQL advisory lock.

Two `prefect server start` processes starting at once against one database race: both
run Prefect's migrations, and both register the block types (one fails with a
UniqueViolation on `uq_block_type__slug`). `cshare prefect-server` therefore runs both
steps itself, here, holding `pg_advisory_lock(MIGRATE_LOCK)` on Prefect's database, and
then starts the server with `PREFECT_SERVER_DATABASE_MIGRATE_ON_START=false` and
`PREFECT_SERVER_REGISTER_BLOCKS_ON_START=false`. A replica arriving second waits for the
lock, finds the schema current and the blocks present, and has nothing left to do.

Run as `python -m api.cli.roles.prefect_db` in a child whose environment is Prefect's
(prefect_env.py): Prefect reads its settings from the environment when first imported.
`SERVICES_LOCK` is the one `cshare services` holds for as long as it runs.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Final

import psycopg
from sqlalchemy.engine import make_url

# Fixed keys, taken in the Prefect database only ("3hare-pf" / "3hare-ps" as bytes).
MIGRATE_LOCK: Final = 0x33686172652D7066
SERVICES_LOCK: Final = 0x33686172652D7073
LOCK_POLL_S: Final = 0.5


def plain_dsn(database_url: str, driver: str = "") -> str:
    """The SQLAlchemy URL without Prefect's async driver (libpq form, or `driver`)."""
    url = make_url(database_url)
    url = url.set(drivername="postgresql" + (f"+{driver}" if driver else ""))
    return url.render_as_string(hide_password=False)


def is_postgres(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "postgresql"


async def _migrate_and_register() -> None:
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    db = provide_database_interface()
    await db.create_db()
    session = await db.session()
    async with session:
        await run_block_auto_registration(session=session)


async def _try_lock(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATE_LOCK,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def prepare(database_url: str) -> None:
    """Migrate Prefect's database and register its block types, one process at a time."""
    if not is_postgres(database_url):
        await _migrate_and_register()  # SQLite: one host, one server
        return
    # A session lock on a connection of its own: released with it, even if we die.
    async with await psycopg.AsyncConnection.connect(
        plain_dsn(database_url), autocommit=True
    ) as conn:
        # Polled, never waited for inside a statement: a waiting statement holds a
        # snapshot, and the holder's `CREATE INDEX CONCURRENTLY` (a Prefect migration)
        # waits for every snapshot to end, so the two would wait for each other.
        while not await _try_lock(conn):  # noqa: ASYNC110 - another process holds it
            await asyncio.sleep(LOCK_POLL_S)
        try:
            await _migrate_and_register()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))


def main() -> int:
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    if url is None:
        print("PREFECT_SERVER_DATABASE_CONNECTION_URL is not set", file=sys.stderr)
        return 2
    asyncio.run(prepare(url.get_secret_value()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
