"""The agent's small pieces: its token file, its reading of the claim answers, and the
docker job variables a claim's limits become."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from agents import config
from agents.client import AgentClient, ApiProblem, MachineGone
from agents.docker_job import DEFAULT_IMAGE, docker_job_variables


def _creds(name: str = "box") -> config.MachineCredentials:
    return config.MachineCredentials(
        api_url="http://cp:8000",
        org="acme",
        name=name,
        machine_id=str(uuid.uuid4()),
        machine_token="cs_m_" + "x" * 43,
        machine_type="gpu",
    )


def test_the_token_file_is_private_and_reused(tmp_path: Path) -> None:
    creds = _creds()
    path = config.save(creds, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert config.load("http://cp:8000/", "acme", "box", tmp_path) == creds
    # Another server, org or name is another machine.
    assert config.load("http://other:8000", "acme", "box", tmp_path) is None
    assert config.load("http://cp:8000", "acme", "box2", tmp_path) is None
    path.chmod(0o644)
    config.load("http://cp:8000", "acme", "box", tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config.delete("http://cp:8000", "acme", "box", tmp_path)
    assert config.load("http://cp:8000", "acme", "box", tmp_path) is None


def test_a_damaged_token_file_is_reported(tmp_path: Path) -> None:
    path = config.save(_creds(), tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        config.load("http://cp:8000", "acme", "box", tmp_path)
    path.write_text(json.dumps({"api_url": "x"}))
    with pytest.raises(ValueError, match="lacks"):
        config.load("http://cp:8000", "acme", "box", tmp_path)


def test_the_state_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSHARE_AGENT_HOME", str(tmp_path / "agent"))
    assert config.state_dir() == tmp_path / "agent"
    monkeypatch.delenv("CSHARE_AGENT_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert config.state_dir() == tmp_path / "state" / "cshare" / "agent"


def _answering(status: int, body: Any) -> AgentClient:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer cs_m_token"
        return httpx.Response(status, json=body)

    return AgentClient("http://cp", "cs_m_token", transport=httpx.MockTransport(handler))


def _claim(client: AgentClient) -> Any:
    async def go() -> Any:
        async with client:
            return await client.claim(uuid.uuid4(), 1)

    return anyio.run(go)


def test_claim_answers() -> None:
    granted = _claim(
        _answering(
            200,
            {
                "decision": "run",
                "job_id": "j1",
                "flow_run_id": str(uuid.uuid4()),
                "machine_type": "cpu",
                "user": "ada",
                "limits": {"memory_mb": 512, "max_runtime_s": 60},
            },
        )
    )
    assert granted.granted and (granted.memory_mb, granted.max_runtime_s) == (512, 60)
    for status, decision in ((409, "hold"), (403, "reject"), (409, "skip")):
        answer = _claim(
            _answering(
                status, {"error": f"claim_{decision}", "detail": "why", "decision": decision}
            )
        )
        assert (answer.decision, answer.reason, answer.granted) == (decision, "why", False)
    with pytest.raises(MachineGone):
        _claim(_answering(401, {"error": "bad_machine_token", "detail": "gone"}))
    with pytest.raises(ApiProblem) as refused:
        _claim(_answering(403, {"error": "machine_not_approved", "detail": "wait"}))
    assert refused.value.code == "machine_not_approved" and refused.value.status == 403
    with pytest.raises(ApiProblem):
        _claim(_answering(503, {"error": "unavailable", "detail": "Prefect is down"}))


def test_docker_job_variables_carry_the_claims_limits() -> None:
    variables = docker_job_variables(memory_mb=2048, max_runtime_s=600, job_id="j1")
    assert variables["mem_limit"] == "2048m" and variables["memswap_limit"] == "2048m"
    assert variables["image"] == DEFAULT_IMAGE and variables["auto_remove"] is True
    assert variables["env"] == {
        "CSHARE_MEMORY_MB": "2048",
        "CSHARE_MAX_RUNTIME_S": "600",
        "CSHARE_JOB_ID": "j1",
    }
    assert variables["labels"] == {"io.compute-share.job-id": "j1"}
    # A deployment's own variables are kept, except a memory limit above the claim's.
    base = {"image": "acme/train:3", "mem_limit": "64g", "env": {"A": "1"}, "auto_remove": False}
    merged = docker_job_variables(memory_mb=512, max_runtime_s=60, base=base)
    assert merged["image"] == "acme/train:3" and merged["mem_limit"] == "512m"
    assert merged["env"]["A"] == "1" and merged["auto_remove"] is False
    assert base["mem_limit"] == "64g"  # the deployment's own mapping is untouched
    assert docker_job_variables(memory_mb=1, max_runtime_s=1, image="x:1")["image"] == "x:1"


def test_prefect_finds_our_worker_type_through_the_entry_point() -> None:
    from prefect.workers.base import BaseWorker

    from agents.worker import CshareWorker

    assert BaseWorker.get_worker_class_from_type("cshare") is CshareWorker
    template = CshareWorker.get_default_base_job_template()
    assert {"command", "env", "working_dir"} <= set(template["job_configuration"])


def test_the_worker_refuses_to_start_without_a_control_plane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agents.worker import ControlPlane, CshareWorker

    monkeypatch.delenv("CSHARE_API_URL", raising=False)
    monkeypatch.delenv("CSHARE_MACHINE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="CSHARE_MACHINE_TOKEN"):
        CshareWorker(work_pool_name="acme-cpu")
    monkeypatch.setenv("CSHARE_API_URL", "http://cp:8000")
    monkeypatch.setenv("CSHARE_MACHINE_TOKEN", "cs_m_x")
    assert ControlPlane.from_env() == ControlPlane("http://cp:8000", "cs_m_x")
