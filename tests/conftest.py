"""Shared fixtures: a database per backend (SQLite and PostgreSQL), the app, API clients.

PostgreSQL tests use a database of their own per pytest worker (created from the
server's `test` database) so parallel runs never collide. When CI=true a missing
PostgreSQL fails the run; elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Cheap password hashing and an isolated home for every test process; set before any
# project module reads its settings.
os.environ.setdefault("CSHARE_ARGON2_TIME_COST", "1")
os.environ.setdefault("CSHARE_ARGON2_MEMORY_KIB", "1024")
os.environ["CSHARE_HOME"] = tempfile.mkdtemp(prefix="cshare-test-home-")
os.environ.setdefault("CSHARE_DISPATCHER_ENABLED", "false")
os.environ.setdefault("CSHARE_GC_FREEZE", "false")
# Tests sign many people up and in from one address; the rate-limit tests turn these on
# in their own settings (the sign-in throttle keeps its production defaults).
os.environ.setdefault("CSHARE_RATE_LIMIT_LOGIN", "")
os.environ.setdefault("CSHARE_RATE_LIMIT_SIGNUP", "")
os.environ.setdefault("CSHARE_RATE_LIMIT_TOKENS", "")

import psycopg
import pytest
from sqlalchemy import text

import datasets.models  # noqa: F401
import flows.models  # noqa: F401  (so TRUNCATE sees every table)
import orgs.notifications
import orgs.secrets
import orgs.two_factor  # noqa: F401
from orgs.db import Base, Database
from orgs.migrate import upgrade
from tests.support import ApiClient

pytest_plugins = [
    "tests.prefect_server",
    "tests.s3_server",
    "tests.azurite_server",
    "tests.gcs_server",
    "tests.http_receiver",
    "tests.smtp_server",
    "tests.git_servers",
    "tests.oidc_server",
    "tests.github_oauth",
]

PG_ADMIN_URL = os.environ.get("CSHARE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # the reason is shown in the skip message
        return f"{type(exc).__name__}: {exc}".strip()


@pytest.fixture(scope="session")
def pg_server_url(worker_id: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this pytest worker, migrated, dropped at the end."""
    problem = _pg_reachable()
    if problem is not None:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {problem}"
        if IN_CI:
            pytest.fail(message + " (CI=true requires it)")
        pytest.skip(message)
    name = f"cshare_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    db = Database(url)
    upgrade(db.engine)
    db.dispose()
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file copied for each test (faster than migrating every time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db.engine)
    db.dispose()  # the last connection closing checkpoints the WAL into the file
    return path


def _truncate_all(db: Database) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty, migrated database on each backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "cshare.db"
        shutil.copy(template, path)
        db = Database(f"sqlite:///{path}")
    else:
        db = Database(request.getfixturevalue("pg_server_url"))
        _truncate_all(db)
    yield db
    db.dispose()


@pytest.fixture
def sqlite_database(tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    """SQLite only, for tests that do not depend on the backend."""
    path = tmp_path / "cshare.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}")
    yield db
    db.dispose()


@pytest.fixture
def api(database: Database) -> Iterator[ApiClient]:
    """The app in-process on each backend, with helpers to sign people up."""
    with ApiClient.start(database) as client:
        yield client


@pytest.fixture
def sqlite_api(sqlite_database: Database) -> Iterator[ApiClient]:
    with ApiClient.start(sqlite_database) as client:
        yield client
