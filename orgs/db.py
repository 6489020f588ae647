"""Database engine and sessions for SQLite (embedded) and PostgreSQL (production).

SQLite: WAL, foreign keys on, and write transactions opened with `BEGIN IMMEDIATE` so a
read-then-write never fails half way with SQLITE_BUSY; reads use a plain deferred BEGIN
so they do not queue behind writers. PostgreSQL: psycopg 3, READ COMMITTED, and the
services take row locks (`FOR UPDATE`) or use conditional updates where limits must hold.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from policies.errors import Invalid

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalize_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


# Below common idle-connection cut-offs (PgBouncer's server_idle_timeout 600 s, cloud
# load balancers' 350 s).
POOL_RECYCLE_S: Final = 300


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=kwargs.pop("pool_size", 16),
            max_overflow=kwargs.pop("max_overflow", 16),
            **kwargs,
        )
        _configure_sqlite(engine)
    else:
        # No pre-ping (a round trip on every checkout, ~1/4 of a submission's queries):
        # connections are recycled before servers or proxies drop idle ones, and a
        # connection found dead mid-request invalidates the whole pool (SQLAlchemy's
        # default on a disconnect error), so a database restart costs one failed request
        # per process, not one per pooled connection.
        engine = create_engine(
            url,
            pool_size=kwargs.pop("pool_size", 10),
            max_overflow=kwargs.pop("max_overflow", 20),
            pool_recycle=kwargs.pop("pool_recycle", POOL_RECYCLE_S),
            **kwargs,
        )
    _refuse_nul_characters(engine)
    return engine


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    wrapped = getattr(value, "obj", None)  # psycopg's Json/Jsonb parameter wrappers
    return wrapped is not None and _has_nul(wrapped)


def _refuse_nul_characters(engine: Engine) -> None:
    """PostgreSQL cannot store NUL in text (it raised a 500); refuse it on both backends."""

    @event.listens_for(engine, "before_cursor_execute")
    def _check(
        _conn: Any, _cursor: Any, _stmt: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        if _has_nul(parameters):
            raise Invalid("Text may not contain NUL (\\x00) characters.", code="nul_character")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("cshare_write", True) else ""
        conn.exec_driver_sql(f"PRAGMA query_only={0 if mode else 1}")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


class Database:
    """One engine and two session factories: writes (locked early on SQLite) and reads."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, **engine_kwargs)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(
            self.engine.execution_options(cshare_write=False), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def session(self, *, write: bool = True) -> Session:
        return (self._write if write else self._read)()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write session committed on success, rolled back on any error."""
        with self._write() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
