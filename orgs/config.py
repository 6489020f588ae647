"""Settings for the control plane, read from the environment (prefix `CSHARE_`)."""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orgs.netguard import Allowlist
from orgs.sso_config import SsoProvider, parse_providers


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CSHARE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".cshare")
    # Logging of `cshare server`, `cshare agent start` and `cshare up` (agents/logsetup.py):
    # "text" for people, "json" (one object per line) for log collectors.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    database_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"

    prefect_api_url: str = "http://127.0.0.1:4200/api"
    prefect_auth_string: SecretStr | None = None
    prefect_ui_url: str | None = None
    # Instance operators: comma-separated e-mails or user names of existing accounts. They
    # open the whole instance's Prefect UI at /prefect/admin/ (docs/security.md, "Prefect
    # UI"); list only accounts that exist, since a listed address nobody registered yet
    # would be claimed by whoever signs up with it.
    operators: str = ""

    # Password hashing cost (argon2id). Tests lower it; production keeps the defaults.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    session_token_days: int = 30
    # Failed sign-ins (policies/throttle.py): free failures per account (e-mail) and per
    # client address, then waits of base, 2 x base, ... capped at max; failures are
    # forgotten after `login_forget_after_s` without a new one. Stored in the database,
    # so every replica applies the same waits.
    login_free_failures: int = Field(default=5, ge=0)
    login_free_failures_per_address: int = Field(default=20, ge=0)
    login_delay_base_s: float = Field(default=1.0, gt=0)
    login_delay_max_s: float = Field(default=60.0, gt=0)
    login_forget_after_s: float = Field(default=3600.0, gt=0)
    # Request rate limits (the `limits` library: "10/minute", "5/minute;100/hour"; empty
    # turns one off): sign-ins and sign-ups per client address, new personal tokens per
    # user. Counted in `rate_limit_storage` (a `limits` storage URI): "memory://" counts
    # per process; "redis://host:6379" (with the redis package) shares across replicas.
    rate_limit_login: str = "10/minute"
    rate_limit_signup: str = "20/hour"
    rate_limit_tokens: str = "30/hour"
    rate_limit_storage: str = "memory://"
    # Proxies whose X-Forwarded-For names the client (comma-separated addresses or CIDRs);
    # empty: the peer address is the client. Also what uvicorn trusts for the scheme.
    trusted_proxies: str = ""

    # How agents reach Prefect. Unset (the default): through this server's Prefect proxy
    # (`<api>/prefect/api`) with their own machine token; Prefect's auth string never
    # leaves the control plane. Set: agents talk to Prefect at this URL directly (a legacy
    # mode for a trusted fleet), and get its auth string only with
    # `agent_share_prefect_auth` (docs/security.md).
    agent_prefect_api_url: str | None = None
    agent_share_prefect_auth: bool = False
    # How often agents heartbeat (capped at a third of the org's machines.offline_after_s).
    agent_heartbeat_interval_s: float = 5.0

    # Elastic machine types (docs/elastic.md): what org admins may attach. The `process`
    # provider runs agents (and so members' jobs) on this host, as this server's user:
    # off unless the operator turns it on; `docker` only on the engines listed here
    # (comma-separated URLs, e.g. unix:///run/docker.sock, tcp://10.0.0.5:2376).
    elastic_process_enabled: bool = False
    elastic_docker_engines: str = ""
    # Seconds between two scaler passes (only the lease holder scales); 0 turns it off.
    elastic_interval_s: float = Field(default=2.0, ge=0)
    # Where started agents reach this API (default: public_url).
    elastic_api_url: str | None = None
    # A started machine that has not heartbeated by then is replaced.
    elastic_start_timeout_s: float = Field(default=120.0, gt=0)
    # Process agents' work dirs (default: CSHARE_HOME/elastic).
    elastic_work_dir: Path | None = None

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
    # `/metrics` (docs/operations.md). Scrapers send `Authorization: Bearer <token>`;
    # without a token every scrape of the API's `/metrics` answers 401 unless
    # `metrics_open` says the port is private anyway. `metrics_listen` ("127.0.0.1:9464")
    # serves `/metrics` on a listener of its own (the token applies there too when set).
    metrics_token: SecretStr | None = None
    metrics_open: bool = False
    metrics_listen: str | None = None
    # Per-org series carry the slug of at most this many organizations (the busiest:
    # open jobs, then machines); the rest share the label "other". Every label value is
    # a series Prometheus keeps, so this bounds them.
    metrics_top_orgs: int = Field(default=20, ge=0, le=1000)

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        host, sep, port = value.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"metrics_listen must be HOST:PORT, like 127.0.0.1:9464: {value!r}")
        return value.strip()

    def metrics_address(self) -> tuple[str, int] | None:
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)

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

    # Notifications (orgs.notifications). The delivery worker runs in every API
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
    # Outgoing mail (e-mail targets and members' own job e-mails), sent through this
    # SMTP server; unset host or sender: no e-mail. STARTTLS by default; `smtp_ssl` for
    # implicit TLS (port 465); neither only for a local relay.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    smtp_starttls: bool = True
    smtp_ssl: bool = False

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
    # see flows/dispatch/housekeeping.py.
    dataset_gc_interval_s: float = Field(default=3600.0, ge=0)
    # Directory versions are tar streams: the most bytes and files one may unpack to.
    archive_max_bytes: int = Field(default=10 << 30, ge=1)
    archive_max_files: int = Field(default=100_000, ge=1)
    # The largest code bundle (`cshare deploy`) accepted; the CLI reads the same variable.
    bundle_max_bytes: int = Field(default=100 << 20, ge=1)

    # Org secrets (orgs.secrets) are encrypted with this key: urlsafe-base64 32-byte
    # Fernet keys, comma-separated; the first encrypts, all decrypt (rotation: put the new
    # key first, run `cshare db rotate-secrets`, drop the old one). Unset: a key file made
    # 0600 under `home/secrets/` on first use (one server only; replicas share this).
    secrets_key: SecretStr | None = None

    # Organizations' own S3 stores (datasets.endpoints). Their endpoint must be https://
    # to a public address unless allowed here: comma-separated host patterns and
    # networks, like `minio.internal,*.example.com,10.0.0.0/8`. Checked on every
    # connection, against the address actually connected to.
    store_endpoint_allowlist: str = ""
    # Let org stores use the API server's own AWS credentials (environment, profiles,
    # instance role). Off: an org store signs with the keys its admins stored, or not at
    # all.
    store_allow_server_credentials: bool = False

    # Git repositories the server resolves refs in (flows.git_sources): hosts must resolve
    # to public addresses unless allowed here (same syntax as the store allowlist); plain
    # http:// only for allowed hosts. Tests and single-machine setups allow 127.0.0.1/32.
    git_host_allowlist: str = ""

    @field_validator("store_endpoint_allowlist", "git_host_allowlist")
    @classmethod
    def _check_allowlist(cls, value: str) -> str:
        Allowlist.parse(value)  # fail at start-up, not at the first upload
        return value

    def store_allowlist(self) -> Allowlist:
        return Allowlist.parse(self.store_endpoint_allowlist)

    def git_allowlist(self) -> Allowlist:
        return Allowlist.parse(self.git_host_allowlist)

    # Sign-in providers (docs/sso.md): a JSON list of OpenID Connect providers (by
    # discovery URL) and GitHub apps, e.g. `[{"name": "corp", "kind": "oidc",
    # "discovery_url": "...", "client_id": "...", "client_secret": "..."}]`.
    sso_providers: list[SsoProvider] = Field(default_factory=list)

    @field_validator("sso_providers", mode="after")
    @classmethod
    def _check_providers(cls, value: list[SsoProvider]) -> list[SsoProvider]:
        return parse_providers(value)

    def sso_provider(self, name: str) -> SsoProvider | None:
        return next((p for p in self.sso_providers if p.name == name), None)

    # A job token lives for the job's runtime limit plus this (inputs are fetched before
    # the clock starts, outputs uploaded after); the job's end revokes it earlier.
    job_token_grace_s: float = Field(default=600.0, ge=0, le=86_400)

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("rate_limit_login", "rate_limit_signup", "rate_limit_tokens")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        if value.strip():
            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit like '10/minute': {value!r}") from exc
        return value.strip()

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            ip_network(part, strict=False)  # ValueError names the bad entry
        return value.strip()

    def trusted_proxy_networks(self) -> list[IPv4Network | IPv6Network]:
        return [
            ip_network(p.strip(), strict=False)
            for p in self.trusted_proxies.split(",")
            if p.strip()
        ]

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
