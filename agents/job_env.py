"""The environment a job's process gets: an allowlist, never the agent's environment.

A job runs code its submitter chose, on someone else's machine; the agent beside it
holds the machine token, often its owner's `CSHARE_TOKEN`, and, in the legacy direct
mode, Prefect's auth string. Nothing reaches the job unless a row below names it:

    variable                          value (why)
    --------------------------------  ---------------------------------------------------
    PATH, LANG, LC_*, TZ              the agent's (programs, locale, time zone)
    PYTHONPATH, SSL_CERT_FILE,        the agent's (the machine's Python, CA bundle and
      SSL_CERT_DIR,                   GPUs: paths and ids, no secret)
      CUDA_VISIBLE_DEVICES
    CSHARE_JOB_ENV_PASSTHROUGH names  the agent's: the machine owner's explicit choice
                                      (e.g. LD_LIBRARY_PATH); never CSHARE_*/PREFECT_*
    HOME                              the job's working directory
    TMPDIR                            the job's own temporary directory
    PREFECT_HOME                      the job's own (no profile of the agent's)
    the deployment's `env`            as given (the job's own variables)
    PREFECT_API_URL,                  the agent's Prefect settings (the engine in the
      PREFECT_API_SSL_CERT_FILE,      job reports its run)
      PREFECT_API_TLS_INSECURE_SKIP_VERIFY, PREFECT_LOGGING_*
    PREFECT_API_KEY                   the job token: the job's only Prefect credential
                                      (the proxy <api>/prefect/.../api takes it for the
                                      job's own run)
    PREFECT_API_AUTH_STRING           through the proxy: the job token again (Prefect's
                                      websocket clients send only this); legacy direct
                                      mode only while CSHARE_JOB_SHARE_PREFECT_AUTH is
                                      true (the default there)
    PREFECT__*                        per run: run id, control channel, attribution
    CSHARE_JOB_ID, CSHARE_ORG,        the job's (the runtime helpers, flows.runtime)
      CSHARE_API_URL, CSHARE_JOB_TOKEN, CSHARE_INPUTS_DIR, CSHARE_MAX_RUNTIME_S,
      CSHARE_MEMORY_MB, CSHARE_FLOWS_DIR
    CSHARE_CODE_DIR                   the job's own copy of its code bundle
                                      (agents.code_cache); also put first on PYTHONPATH
                                      so the bundle's modules import

Never passed, whatever asks for it: `CSHARE_TOKEN`, `CSHARE_MACHINE_TOKEN`, any other
`CSHARE_*` or `PREFECT_*` of the agent, and the rest of the agent's environment.
Standard library only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "NEVER",
    "JobDirs",
    "engine_env",
    "is_proxy_url",
    "job_env",
    "machine_env",
    "share_auth_in_legacy_mode",
]

MACHINE_NAMES: Final = frozenset(
    {
        "PATH",
        "LANG",
        "TZ",
        "PYTHONPATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CUDA_VISIBLE_DEVICES",
    }
)
MACHINE_PREFIXES: Final = ("LC_",)
PREFECT_NAMES: Final = frozenset(
    {"PREFECT_API_URL", "PREFECT_API_SSL_CERT_FILE", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY"}
)
PREFECT_PREFIXES: Final = ("PREFECT_LOGGING_",)
LOG_BATCH_INTERVAL_S: Final = "0.25"
# Credentials the agent may hold: never copied from it, not even on request.
NEVER: Final = frozenset(
    {
        "CSHARE_TOKEN",
        "CSHARE_MACHINE_TOKEN",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_API_KEY",
        "PREFECT_SERVER_API_AUTH_STRING",
        "CSHARE_PREFECT_AUTH_STRING",
    }
)
JOB_NAMES: Final = frozenset(
    {
        "CSHARE_JOB_ID",
        "CSHARE_ORG",
        "CSHARE_API_URL",
        "CSHARE_JOB_TOKEN",
        "CSHARE_INPUTS_DIR",
        "CSHARE_MAX_RUNTIME_S",
        "CSHARE_MEMORY_MB",
        "CSHARE_FLOWS_DIR",
        "CSHARE_CODE_DIR",
    }
)
# Compute Share's Prefect API proxy: <server>/prefect/api or <server>/prefect/<org>/api.
_PROXY_PATH = re.compile(r"/prefect(/[^/]+)?/api/?$")


@dataclass(frozen=True)
class JobDirs:
    """A job's own directories: its working directory (`HOME`), temporary files
    (`TMPDIR`) and Prefect home (`PREFECT_HOME`)."""

    work: Path
    tmp: Path
    prefect_home: Path


def is_proxy_url(prefect_api_url: str | None) -> bool:
    """Whether Prefect is reached through Compute Share's proxy (not Prefect itself)."""
    if not prefect_api_url:
        return False
    return _PROXY_PATH.search(urlsplit(prefect_api_url).path) is not None


def share_auth_in_legacy_mode(environ: Mapping[str, str] | None = None) -> bool:
    """`CSHARE_JOB_SHARE_PREFECT_AUTH` (default true): in the legacy direct mode only,
    whether jobs get Prefect's auth string (their engine cannot report without it)."""
    value = (environ if environ is not None else os.environ).get("CSHARE_JOB_SHARE_PREFECT_AUTH")
    return (value or "true").strip().lower() not in ("0", "false", "no", "off")


def machine_env(
    environ: Mapping[str, str], passthrough: Iterable[str] | str = ()
) -> dict[str, str]:
    """What a job takes from the machine's environment (the agent's)."""
    if isinstance(passthrough, str):
        passthrough = passthrough.replace(",", " ").split()
    extra = {name for name in passthrough if name not in NEVER and not _agent_only(name)}
    return {
        k: v
        for k, v in environ.items()
        if k in MACHINE_NAMES or k.startswith(MACHINE_PREFIXES) or k in extra
    }


def _agent_only(name: str) -> bool:
    # The agent's own settings stay the agent's, even if the owner lists them.
    return name.startswith(("CSHARE_", "PREFECT_"))


def engine_env(
    prefect_settings: Mapping[str, str],
    *,
    dirs: JobDirs | None = None,
    job_token: str | None = None,
    share_auth: bool = True,
) -> dict[str, str]:
    """The Prefect settings the job's engine needs, from the agent's (`prefect_settings`:
    `Settings.to_environment_variables()`). Without `dirs` and `job_token`: the part
    common to every run (a warm process starts with it)."""
    env = {
        k: v
        for k, v in prefect_settings.items()
        if k in PREFECT_NAMES or k.startswith(PREFECT_PREFIXES)
    }
    # The job token dies the moment the run is final, so log lines still waiting in
    # Prefect's 2 s batch (a flow's last lines) were refused with 401: ship them sooner.
    env.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", LOG_BATCH_INTERVAL_S)
    auth = prefect_settings.get("PREFECT_API_AUTH_STRING")
    proxied = is_proxy_url(env.get("PREFECT_API_URL"))
    if auth and share_auth and not proxied:
        env["PREFECT_API_AUTH_STRING"] = auth
    if job_token:
        env["PREFECT_API_KEY"] = job_token
        if proxied:
            # Prefect's websocket clients (events, logs) send only the auth string: through
            # the proxy that is the job token too, never the agent's credential.
            env["PREFECT_API_AUTH_STRING"] = job_token
    if dirs is not None:
        env["PREFECT_HOME"] = str(dirs.prefect_home)
    return env


def job_env(
    *,
    machine: Mapping[str, str],
    job_variables: Mapping[str, str | None],
    engine: Mapping[str, str],
    run: Mapping[str, str],
    job: Mapping[str, str],
    dirs: JobDirs,
) -> dict[str, str]:
    """The job's whole environment, in order of precedence (last wins): the machine's
    allowed variables, its directories, the deployment's variables, the engine's
    settings and per-run plumbing (`PREFECT__*` only), the job's own `CSHARE_*`."""
    env: dict[str, str] = dict(machine)
    env.update(HOME=str(dirs.work), TMPDIR=str(dirs.tmp))
    env.update({k: v for k, v in job_variables.items() if v is not None})
    env.update(engine)
    env.update({k: v for k, v in run.items() if k.startswith("PREFECT__")})
    env.update({k: v for k, v in job.items() if k in JOB_NAMES})
    code_dir = env.get("CSHARE_CODE_DIR")
    if code_dir:
        rest = env.get("PYTHONPATH")
        env["PYTHONPATH"] = code_dir + (os.pathsep + rest if rest else "")
    return env
