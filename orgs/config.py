"""Settings for the control plane, read from the environment (prefix `CSHARE_`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orgs.netguard import Allowlist


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CSHARE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".cshare")
    database_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"

    prefect_api_url: str = "http://127.0.0.1:4200/api"
    prefect_auth_string: SecretStr | None = None
    prefect_ui_url: str | None = None

    # Password hashing cost (argon2id). Tests lower it; production keeps the defaults.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    session_token_days: int = 30
    login_max_failures: int = 5
    login_lockout_seconds: int = 300

    # What approved agents are told (see agents/README in the docs: the trade-off).
    # The Prefect URL machines should use, when it differs from the control plane's.
    agent_prefect_api_url: str | None = None
    # Hand the Prefect auth string to approved machines' agents. Off: every agent must
    # be given PREFECT_API_AUTH_STRING by its operator instead.
    agent_share_prefect_auth: bool = True
    # How often agents heartbeat (capped at a third of the org's machines.offline_after_s).
    agent_heartbeat_interval_s: float = 5.0

    dispatcher_enabled: bool = True
    # Freeze start-up objects out of the garbage collector once the app has started.
    # Tests build many apps in one process and turn it off.
    gc_freeze: bool = True
    dispatcher_interval_s: float = 1.0
    # Jobs and the dispatcher (flows/): how the gateway talks to Prefect, and how much
    # work one dispatcher cycle may do.
    prefect_max_concurrency: int = 8
    prefect_retries: int = 6
    # How long one Prefect call made while answering a request may take in all (waiting
    # for a slot, retries, backoff). Past it the request goes on without Prefect: a
    # submission answers 201 with `flow_run_id: null` and the dispatcher makes the run.
    prefect_request_budget_s: float = Field(default=10.0, gt=0)
    # Requests slower than this are logged (route template, status, seconds).
    slow_request_s: float = Field(default=5.0, gt=0)
    work_pool_type: str = "process"
    dispatcher_lease_ttl_s: float = 15.0
    dispatcher_batch_size: int = 200
    # Adopt runs made outside the API (schedules, UI) this long before they are due: more
    # than a worker's prefetch window, so a run is held before any worker may pick it.
    dispatcher_adopt_horizon_s: float = 30.0
    # A job whose run is still missing after this long gets it from the dispatcher.
    dispatcher_create_grace_s: float = 5.0
    # Who turns schedules into runs: "control-plane" (the dispatcher, as submissions of
    # the schedule's owner; the Prefect schedule is kept inactive, for the UI) or
    # "prefect" (Prefect's scheduler; the dispatcher adopts the runs). Prefect 3.8.8's
    # scheduler fails to insert runs with SQLAlchemy 2.1, hence the default.
    schedules_backend: Literal["control-plane", "prefect"] = "control-plane"
    heartbeat_timeout_s: float = 30.0

    # Webhook notifications (orgs.notifications). The delivery worker runs in every API
    # process; several replicas share the outbox safely (rows are claimed under a lock).
    notifications_enabled: bool = True
    # Loopback targets (127.0.0.1, ::1) are refused like other internal addresses unless
    # this is set: for tests and single-machine setups whose receiver runs locally.
    notifications_allow_loopback: bool = False
    notifications_max_attempts: int = 8
    notifications_backoff_s: float = 5.0
    notifications_backoff_max_s: float = 600.0
    notifications_connect_timeout_s: float = 3.0
    notifications_read_timeout_s: float = 5.0
    notifications_poll_s: float = 1.0
    notifications_offline_sweep_s: float = 10.0

    # Datasets. The default store (orgs without their own): local disk under
    # `dataset_dir` (default `home/datasets`), or an S3 URL
    # `s3://bucket/prefix?endpoint_url=...&region=...&profile=...`. Streaming chunk size;
    # S3 multipart part size and parts in flight (memory ~ (concurrency + 1) * part).
    dataset_dir: Path | None = None
    dataset_store_url: str | None = None
    dataset_chunk_bytes: int = Field(default=1 << 20, ge=64 << 10, le=64 << 20)
    dataset_s3_part_bytes: int = Field(default=8 << 20, ge=5 << 20, le=512 << 20)
    dataset_s3_concurrency: int = Field(default=4, ge=1, le=32)
    # Off only for throwaway stores (tests): a committed version must survive a power cut.
    dataset_fsync: bool = True
    # How often each API process purges stored bytes nothing refers to (0: never);
    # see datasets/housekeeping.py.
    dataset_gc_interval_s: float = Field(default=3600.0, ge=0)
    # Directory versions are tar streams: the most bytes and files one may unpack to.
    archive_max_bytes: int = Field(default=10 << 30, ge=1)
    archive_max_files: int = Field(default=100_000, ge=1)

    # Organizations' own S3 stores (datasets.endpoints). Their endpoint must be https://
    # to a public address unless allowed here: comma-separated host patterns and
    # networks, like `minio.internal,*.example.com,10.0.0.0/8`. Checked on every
    # connection, against the address actually connected to.
    store_endpoint_allowlist: str = ""
    # Let org stores use the API server's own AWS credentials (environment, profiles,
    # instance role). Off: an org store signs with the keys its admins stored, or not at
    # all.
    store_allow_server_credentials: bool = False

    @field_validator("store_endpoint_allowlist")
    @classmethod
    def _check_allowlist(cls, value: str) -> str:
        Allowlist.parse(value)  # fail at start-up, not at the first upload
        return value

    def store_allowlist(self) -> Allowlist:
        return Allowlist.parse(self.store_endpoint_allowlist)

    def resolved_dataset_dir(self) -> Path:
        return self.dataset_dir or self.home / "datasets"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'cshare.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
