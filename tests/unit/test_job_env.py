"""A job's environment is an allowlist (agents.job_env): an agent full of secrets
starts jobs that hold none of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import job_env

DIRS = job_env.JobDirs(Path("/jobs/j1/work"), Path("/jobs/j1/tmp"), Path("/jobs/j1/prefect"))
SECRETS = {
    "CSHARE_TOKEN": "member-secret-token",
    "CSHARE_MACHINE_TOKEN": "machine-secret-token",
    "CSHARE_TEST_AGENT_SECRET": "agent-variable-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "GITHUB_TOKEN": "gh-secret",
    "PREFECT_API_KEY": "agents-own-prefect-key",
    "PREFECT_SERVER_API_AUTH_STRING": "server-auth-secret",
    "CSHARE_PREFECT_AUTH_STRING": "server-auth-secret",
    "DATABASE_URL": "postgresql://u:db-secret@h/db",
    "HTTPS_PROXY": "http://user:proxy-secret@proxy:3128",
    "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock",
}
AGENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "Europe/Paris",
    "HOME": "/home/owner",
    "TMPDIR": "/tmp/owner",
    "PYTHONPATH": "/srv/lab",
    "CUDA_VISIBLE_DEVICES": "0",
    **SECRETS,
}
DIRECT = {
    "PREFECT_API_URL": "http://127.0.0.1:4200/api",
    "PREFECT_API_AUTH_STRING": "admin:prefect-auth-secret",
    "PREFECT_API_KEY": "agents-own-prefect-key",
    "PREFECT_HOME": "/home/owner/.prefect",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "PREFECT_SERVER_API_AUTH_STRING": "server-auth-secret",
}
PROXY = {**DIRECT, "PREFECT_API_URL": "https://cs.example/prefect/lab/api"}
JOB = {
    "CSHARE_JOB_ID": "j1",
    "CSHARE_ORG": "lab",
    "CSHARE_API_URL": "https://cs.example",
    "CSHARE_JOB_TOKEN": "job-token-j1",
    "CSHARE_MAX_RUNTIME_S": "60",
}


def _env(settings: dict[str, str], share_auth: bool = True, **kw: dict[str, str]) -> dict[str, str]:
    return job_env.job_env(
        machine=job_env.machine_env(AGENT_ENV, kw.get("passthrough", {}).keys()),
        job_variables=kw.get("job_variables", {"MY_PARAM": "1"}),
        engine=job_env.engine_env(
            settings, dirs=DIRS, job_token=JOB["CSHARE_JOB_TOKEN"], share_auth=share_auth
        ),
        run={"PREFECT__FLOW_RUN_ID": "r1", "PREFECT__CONTROL_TOKEN": "c", "OTHER": "x"},
        job={**JOB, "CSHARE_TOKEN": "member-secret-token"},
        dirs=DIRS,
    )


def _no_secret(env: dict[str, str]) -> None:
    for name, value in SECRETS.items():
        if name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"):
            assert env.get(name) != value  # the job's own credential, never the agent's
            continue
        assert name not in env, name
        assert not any(value in v for v in env.values()), name


def test_an_agent_full_of_secrets_gives_its_job_none_through_the_proxy() -> None:
    env = _env(PROXY)
    _no_secret(env)
    # The job's only Prefect credential, as the key and as the auth string Prefect's
    # websocket clients send.
    assert env["PREFECT_API_KEY"] == env["PREFECT_API_AUTH_STRING"] == "job-token-j1"
    assert env["PREFECT_API_URL"] == "https://cs.example/prefect/lab/api"
    assert env["HOME"] == "/jobs/j1/work" and env["TMPDIR"] == "/jobs/j1/tmp"
    assert env["PREFECT_HOME"] == "/jobs/j1/prefect"
    assert {"PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "CUDA_VISIBLE_DEVICES"} <= env.keys()
    assert env["MY_PARAM"] == "1" and env["PREFECT__FLOW_RUN_ID"] == "r1"
    assert "OTHER" not in env  # plumbing is PREFECT__* only
    assert env["CSHARE_JOB_TOKEN"] == "job-token-j1" and env["CSHARE_ORG"] == "lab"


def test_prefects_auth_string_only_in_the_legacy_mode_and_only_if_allowed() -> None:
    legacy = _env(DIRECT)
    _no_secret(legacy)
    assert legacy["PREFECT_API_AUTH_STRING"] == "admin:prefect-auth-secret"
    withheld = _env(DIRECT, share_auth=False)
    _no_secret(withheld)
    assert "PREFECT_API_AUTH_STRING" not in withheld
    assert _env(PROXY, share_auth=True)["PREFECT_API_AUTH_STRING"] == "job-token-j1"


def test_the_owner_may_pass_more_but_never_a_credential() -> None:
    env = _env(
        PROXY,
        passthrough={"HTTPS_PROXY": "", "CSHARE_TOKEN": "", "PREFECT_API_AUTH_STRING": ""},
    )
    assert env["HTTPS_PROXY"] == SECRETS["HTTPS_PROXY"]  # the owner's explicit choice
    assert "CSHARE_TOKEN" not in env
    assert env["PREFECT_API_AUTH_STRING"] == "job-token-j1"  # never the agent's
    assert job_env.machine_env({"CSHARE_X": "1", "PREFECT_Y": "2"}, "CSHARE_X,PREFECT_Y") == {}


def test_the_jobs_own_values_win_over_the_deployments() -> None:
    env = _env(PROXY, job_variables={"CSHARE_JOB_TOKEN": "forged", "PREFECT_API_URL": "x"})
    assert env["CSHARE_JOB_TOKEN"] == "job-token-j1"
    assert env["PREFECT_API_URL"] == PROXY["PREFECT_API_URL"]


@pytest.mark.parametrize(
    ("url", "proxy"),
    [
        ("https://cs.example/prefect/api", True),
        ("https://cs.example/prefect/lab/api/", True),
        ("http://127.0.0.1:4200/api", False),
        ("https://prefect.example/api", False),
        (None, False),
    ],
)
def test_the_proxy_is_recognised_by_its_path(url: str | None, proxy: bool) -> None:
    assert job_env.is_proxy_url(url) is proxy


def test_the_legacy_setting_defaults_to_sharing() -> None:
    assert job_env.share_auth_in_legacy_mode({}) is True
    assert job_env.share_auth_in_legacy_mode({"CSHARE_JOB_SHARE_PREFECT_AUTH": "false"}) is False


def test_the_code_dir_is_passed_and_importable_first() -> None:
    env = job_env.job_env(
        machine={"PYTHONPATH": "/opt/lib"},
        job_variables={"PYTHONPATH": "/from/deployment"},
        engine={},
        run={},
        job={"CSHARE_CODE_DIR": "/jobs/j1/work/code"},
        dirs=DIRS,
    )
    assert env["CSHARE_CODE_DIR"] == "/jobs/j1/work/code"
    assert env["PYTHONPATH"] == "/jobs/j1/work/code:/from/deployment"
    bare = job_env.job_env(
        machine={}, job_variables={}, engine={}, run={}, job={"CSHARE_CODE_DIR": "/c"}, dirs=DIRS
    )
    assert bare["PYTHONPATH"] == "/c"
