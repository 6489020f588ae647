"""Schema migrations (Alembic), applied by the app on start and by `cshare db upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

import migrations

SCRIPT_LOCATION = Path(migrations.__file__).parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Upgrade the schema; safe to call from several replicas at once on PostgreSQL."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialize concurrent upgrades from several replicas starting together.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(724200001)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
