"""The environment a Prefect server process runs with: built once here for `cshare up`
(one server with its services) and for the scale-out roles (`cshare prefect-server`,
`cshare services`), so both run Prefect configured the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from api.cli.up.processes import clean_env

# prefect-redis modules: events and their causal ordering, the messaging cache, the
# concurrency-slot leases. Every replica must see one state, which the in-memory
# defaults keep per process.
REDIS_MODULES: Final = {
    "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
}


@dataclass(frozen=True)
class PrefectConfig:
    home: Path  # PREFECT_HOME
    database_url: str  # sqlite+aiosqlite:///... or postgresql+asyncpg://...
    auth: str  # PREFECT_SERVER_API_AUTH_STRING
    host: str = "127.0.0.1"
    port: int = 4200
    public_url: str = "http://127.0.0.1:4200"  # what browsers use for the UI's API
    redis_url: str | None = None  # shared messaging for several replicas

    @property
    def on_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def prefect_env(config: PrefectConfig, *, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for `prefect server start` / `prefect server services start`."""
    env = clean_env() if base is None else dict(base)
    env.update(
        PREFECT_HOME=str(config.home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=config.database_url,
        PREFECT_SERVER_API_AUTH_STRING=config.auth,
        # On SQLite the late-runs service fights request handlers for the write lock.
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED=str(not config.on_sqlite).lower(),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST=config.host,
        PREFECT_SERVER_API_PORT=str(config.port),
        PREFECT_UI_API_URL=f"{config.public_url.rstrip('/')}/api",
        PREFECT_LOGGING_SERVER_LEVEL="WARNING",
    )
    if config.redis_url:
        env.update(redis_env(config.redis_url))
    return env


def redis_env(url: str) -> dict[str, str]:
    """Prefect's shared state on Redis (prefect-redis), `url` like redis://host:6379/0."""
    return {
        **REDIS_MODULES,
        "PREFECT_REDIS_MESSAGING_URL": url,
        # Docket (Prefect's background task queue) shares the Redis database.
        "PREFECT_SERVER_DOCKET_URL": url,
    }
