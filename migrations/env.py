"""Alembic environment: runs on the connection handed over by orgs.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import datasets.models  # noqa: F401
import flows.models  # noqa: F401  (every module that defines tables is imported here)
import orgs.login_throttle
import orgs.models
import orgs.notifications as _notification_tables  # noqa: F401
import orgs.registries
import orgs.secrets
import orgs.two_factor  # noqa: F401
from orgs.db import Base, normalize_url

target_metadata = Base.metadata
config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = normalize_url(config.get_main_option("sqlalchemy.url") or "")
        with create_engine(url).connect() as conn:
            context.configure(
                connection=conn, target_metadata=target_metadata, render_as_batch=True
            )
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
