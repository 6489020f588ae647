"""Container jobs end to end: a command in a private registry's image, on a real agent.

On the agents' stack (tests/e2e/test_agents.py: Prefect server, `cshare server`, `cshare
agent start`, all real processes) plus our own dockerd and an htpasswd registry
(tests/docker_engine.py, busybox image made offline): an agent whose environment points
DOCKER_HOST at that engine says `docker: yes`, another that reaches no engine says `no`
and never gets a container job. The registry refuses anonymous pulls; the org's admin
adds its login (`cshare registry add`), and then:

- a command job pulls the image with the org's login, reads its input at
  /inputs/<dataset>, writes /outputs which becomes the output dataset's new version,
  its lines reach the job's log, lineage shows the image digest, no container and no
  credential remain on the machine;
- a job that prints then sleeps shows its line before it ends; cancelling it stops and
  removes its container;
- a job that grows past its memory limit fails naming the limit;
- bad registry credentials and an image that does not exist fail the job with a message
  naming the registry or the image.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.docker_engine import DockerEngine, PrivateRegistry, docker_engine, private_registry
from tests.e2e.test_agents import CSHARE, Stack, stack, wait_for

__all__ = ["docker_engine", "private_registry", "stack"]  # fixtures used by name

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.slow]

DOCKER_BOX = "docker-box"
PLAIN_BOX = "plain-box"


@dataclass
class Env:
    stack: Stack
    engine: DockerEngine
    registry: PrivateRegistry

    def run(self, command: list[str], **body: Any) -> str:
        job = self.stack.ok(
            "POST",
            f"/orgs/{self.stack.slug}/jobs",
            self.stack.member,
            json={"image": body.pop("image", self.registry.image), "command": command, **body},
        )
        return str(job["id"])

    def logs(self, job_id: str) -> list[str]:
        """The job's log lines so far; none while Prefect (SQLite, a loaded machine) does
        not answer in time: the API says 503 then, and the caller polls again."""
        r = self.stack.call("GET", f"/orgs/{self.stack.slug}/jobs/{job_id}/logs", self.stack.owner)
        if r.status_code == 503:
            return []
        assert r.status_code < 300, f"job logs: {r.status_code} {r.text}"
        return [line["message"] for line in r.json()["items"]]

    def job_containers(self) -> list[str]:
        return [n for n in self.engine.containers() if n.startswith("cshare-job-")]


def _cli(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`cshare ...` as the owner, with this worktree's code (PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CSHARE_"))}
    env.update(
        CSHARE_API_URL=stack.url,
        CSHARE_TOKEN=stack.owner["Authorization"].removeprefix("Bearer "),
        CSHARE_ORG=stack.slug,
        CSHARE_CONFIG=str(stack.home / "owner-cli.json"),
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        COLUMNS="250",  # rich cuts lines at the terminal width
    )
    return subprocess.run(
        [CSHARE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def env(
    stack: Stack, docker_engine: DockerEngine, private_registry: PrivateRegistry
) -> Iterator[Env]:
    stack.start_agent(DOCKER_BOX, "cpu", 2, extra_env=docker_engine.env())
    # No engine behind this socket: the agent reports `docker: no`.
    stack.start_agent(PLAIN_BOX, "cpu", 1, extra_env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    machines = wait_for(
        "both agents to register",
        lambda: (m := stack.machines()).keys() >= {DOCKER_BOX, PLAIN_BOX} and m,
        60,
    )
    for name in (DOCKER_BOX, PLAIN_BOX):
        if machines[name]["status"] == "pending":
            stack.ok(
                "POST", f"/orgs/{stack.slug}/machines/{machines[name]['id']}/approve", stack.owner
            )
    wait_for(
        "both agents online",
        lambda: all(stack.machines()[n]["health"] == "online" for n in (DOCKER_BOX, PLAIN_BOX)),
        60,
    )
    yield Env(stack, docker_engine, private_registry)


def test_machines_say_whether_they_reach_docker(env: Env) -> None:
    machines = env.stack.machines()
    assert machines[DOCKER_BOX]["docker"].startswith("yes (engine 20.10"), machines[DOCKER_BOX]
    assert machines[PLAIN_BOX]["docker"] == "no"
    shown = _cli(env.stack, "machine", "show", DOCKER_BOX)
    assert shown.returncode == 0, shown.stderr
    assert "yes (engine" in shown.stdout


def test_the_registry_refuses_anonymous_pulls_and_admins_add_its_login(env: Env) -> None:
    r = httpx.get(f"http://{env.registry.host}/v2/team/tool/manifests/1", timeout=10)
    assert r.status_code == 401
    with pytest.raises(AssertionError, match=r"(?i)unauthorized|no basic auth|denied"):
        env.engine.cli("pull", env.registry.image)
    bad = _cli(env.stack, "registry", "add", "not a host", "-u", "x", "--password-stdin", stdin="p")
    assert bad.returncode != 0 and "not a registry host" in (bad.stdout + bad.stderr)
    added = _cli(
        env.stack,
        "registry",
        "add",
        f"{env.registry.host}/team",
        "--username",
        env.registry.username,
        "--password-stdin",
        stdin=env.registry.password + "\n",
    )
    assert added.returncode == 0, added.stderr
    listed = _cli(env.stack, "registry", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert env.registry.password not in listed.stdout
    assert f"{env.registry.host}/team" in listed.stdout


def test_a_command_job_reads_its_input_writes_its_output_and_records_the_digest(
    env: Env,
) -> None:
    s = env.stack
    tag = uuid.uuid4().hex[:6]
    source, result = f"c-in-{tag}", f"c-out-{tag}"
    s.ok("POST", f"/orgs/{s.slug}/datasets", s.member, json={"name": source})
    r = s.http.post(
        f"/orgs/{s.slug}/datasets/{source}/versions",
        params={"filename": "words.txt"},
        content=b"alpha beta\n",
        headers={**s.member, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    script = (
        f"echo hello-from-container; cat /inputs/{source}/words.txt > /outputs/copy.txt; "
        f"echo made >> /outputs/copy.txt; "
        f"if echo x > /inputs/{source}/new 2>/dev/null; then echo INPUTS-WRITABLE; fi"
    )
    job_id = env.run(
        ["sh", "-c", script],
        inputs=[{"dataset": source}],
        outputs=[result],
        resources={"memory_mb": 64},
    )
    job = s.wait_final(job_id, 180)
    assert job["state"] == "completed", (job, env.logs(job_id), s.agent_log(DOCKER_BOX))
    assert job["machine"]["name"] == DOCKER_BOX
    digest = job["image"]["digest"]
    assert job["image"]["ref"] == env.registry.image
    assert digest.startswith("sha256:") and len(digest) == 71
    lines = wait_for(
        "the container's lines in the job log",
        lambda: (ls := env.logs(job_id)) and any("hello-from-container" in x for x in ls) and ls,
        30,
    )
    assert not any("INPUTS-WRITABLE" in x for x in lines), lines
    # The output: /outputs as a new version produced by this job.
    versions = s.ok("GET", f"/orgs/{s.slug}/datasets/{result}", s.member)["versions"]
    assert [v["produced_by_job_id"] for v in versions] == [job_id]
    tar = s.http.get(
        f"/orgs/{s.slug}/datasets/{result}/versions/1/download", headers=s.member
    ).content
    assert b"alpha beta\nmade\n" in tar
    # Lineage and the CLI show the image with its digest.
    lineage = s.ok("GET", f"/orgs/{s.slug}/jobs/{job_id}/lineage", s.member)
    assert lineage["job"]["image"] == {"ref": env.registry.image, "digest": digest}
    shown = _cli(s, "job", "show", job_id)
    assert f"{env.registry.image}@{digest}" in shown.stdout.replace("\n", ""), shown.stdout
    tree = _cli(s, "lineage", "--job", job_id)
    assert tree.returncode == 0, tree.stderr
    assert f"image: {env.registry.image}@{digest}" in tree.stdout, tree.stdout
    # Nothing left on the machine: no container, no credential anywhere it writes.
    assert env.job_containers() == []
    _assert_no_credential(env)


def _assert_no_credential(env: Env) -> None:
    needle = env.registry.password.encode()
    places = [
        env.stack.home / "agent",
        env.stack.home / f"prefect-{DOCKER_BOX}",
        env.stack.home / f"agent-{DOCKER_BOX}.log",
        Path.home() / ".docker",
        env.engine.root / "cli",
    ]
    places += list(Path("/tmp").glob("cshare-job-*"))
    found = []
    for place in places:
        files = [place] if place.is_file() else (p for p in place.rglob("*") if p.is_file())
        for path in files:
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    assert found == [], f"the registry password is on the machine in {found}"


def test_only_machines_with_docker_run_container_jobs(env: Env) -> None:
    ids = [env.run(["echo", f"n{i}"]) for i in range(3)]
    for job_id in ids:
        job = env.stack.wait_final(job_id, 180)
        assert job["state"] == "completed", (job, env.logs(job_id))
        assert job["machine"]["name"] == DOCKER_BOX


def test_lines_stream_before_the_end_and_cancel_stops_the_container(env: Env) -> None:
    s = env.stack
    job_id = env.run(["sh", "-c", "echo started-early; sleep 120; echo never"])
    wait_for(
        "the first line while the job runs",
        lambda: any("started-early" in x for x in env.logs(job_id)),
        120,
    )
    assert s.job(job_id)["state"] == "running"
    assert f"cshare-job-{job_id}" in env.job_containers()
    s.ok("POST", f"/orgs/{s.slug}/jobs/{job_id}/cancel", s.member)
    job = s.wait_final(job_id, 60)
    assert job["state"] == "cancelled", job
    wait_for("the container to be removed", lambda: env.job_containers() == [], 30)
    assert not any(x == "never" for x in env.logs(job_id))


def test_a_job_past_its_memory_limit_fails_naming_the_limit(env: Env) -> None:
    # `tail /dev/zero` keeps one endless line in memory: it grows until stopped.
    job_id = env.run(["sh", "-c", "tail /dev/zero"], resources={"memory_mb": 32})
    job = env.stack.wait_final(job_id, 180)
    assert job["state"] == "failed", job
    assert "memory limit of 32 MB" in (job["reason"] or ""), job
    assert env.job_containers() == []


def test_an_image_that_does_not_exist_fails_naming_it(env: Env) -> None:
    missing = f"{env.registry.host}/team/missing:1"
    job_id = env.run(["true"], image=missing)
    job = env.stack.wait_final(job_id, 180)
    assert job["state"] == "failed", job
    assert missing in (job["reason"] or "") and "not found" in job["reason"], job


def test_bad_registry_credentials_fail_the_job_naming_the_registry(env: Env) -> None:
    s = env.stack
    # A more specific login (wrong password) wins for this image only.
    s.ok(
        "POST",
        f"/orgs/{s.slug}/registries",
        s.owner,
        json={
            "registry": f"{env.registry.host}/team/tool",
            "username": env.registry.username,
            "password": "wrong-password",
        },
    )
    try:
        job_id = env.run(["true"])
        job = s.wait_final(job_id, 180)
        assert job["state"] == "failed", job
        reason = job["reason"] or ""
        assert env.registry.host in reason and "refused" in reason, job
    finally:
        s.ok("DELETE", f"/orgs/{s.slug}/registries/{env.registry.host}/team/tool", s.owner)


def test_a_rerun_runs_the_same_image_by_digest(env: Env) -> None:
    s = env.stack
    first = env.run(["echo", "once"])
    job = s.wait_final(first, 180)
    assert job["state"] == "completed", job
    digest = job["image"]["digest"]
    rerun = s.ok("GET", f"/orgs/{s.slug}/jobs/{first}/lineage", s.member)["rerun"]
    repo = env.registry.image.rsplit(":", 1)[0]
    assert rerun["image"] == f"{repo}@{digest}" and rerun["command"] == ["echo", "once"]
    body = {k: v for k, v in rerun.items() if k != "code"}
    again = s.ok("POST", f"/orgs/{s.slug}/jobs", s.member, json=body)
    job = s.wait_final(str(again["id"]), 180)
    assert job["state"] == "completed", (job, env.logs(str(again["id"])))
    assert job["image"] == {"ref": f"{repo}@{digest}", "digest": digest}


def test_a_job_past_its_max_runtime_is_stopped_naming_the_limit(env: Env) -> None:
    job_id = env.run(["sleep", "120"], resources={"max_runtime_s": 3})
    job = env.stack.wait_final(job_id, 120)
    assert job["state"] == "failed", job
    assert "exceeded max runtime 3 s" in (job["reason"] or ""), job
    assert env.job_containers() == []


def test_the_cli_runs_a_command_job_and_manages_registries(env: Env) -> None:
    s = env.stack
    ran = _cli(s, "job", "run", "--image", env.registry.image, "--wait", "--", "echo", "via-cli")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "completed" in ran.stdout and f"{env.registry.image}@sha256:" in ran.stdout
    added = _cli(
        s, "registry", "add", "other.example.com", "-u", "x", "--password-stdin", stdin="p"
    )
    assert added.returncode == 0, added.stderr
    removed = _cli(s, "registry", "remove", "other.example.com", "--yes")
    assert removed.returncode == 0, removed.stderr
    listed = _cli(s, "registry", "list")
    assert "other.example.com" not in listed.stdout and env.registry.host in listed.stdout


def test_a_restarted_agent_removes_what_a_killed_one_left_running(env: Env) -> None:
    """kill -9 of the agent mid-job leaves its container running (nothing is left to
    stop it); the same agent, started again, removes it before taking work."""
    s = env.stack
    job_id = env.run(["sh", "-c", "echo up; sleep 300"])
    wait_for("the job to run", lambda: any(x == "up" for x in env.logs(job_id)), 120)
    s.agents[DOCKER_BOX].kill()
    s.agents[DOCKER_BOX].wait(timeout=30)
    assert f"cshare-job-{job_id}" in env.job_containers()
    s.start_agent(DOCKER_BOX, "cpu", 2, extra_env=env.engine.env())
    wait_for("the leftover container to be removed", lambda: env.job_containers() == [], 60)
    assert "Removed 1 container(s) a previous agent left" in s.agent_log(DOCKER_BOX)
    job = s.wait_final(job_id, 120)
    assert job["state"] == "crashed", job
    wait_for("the agent online", lambda: s.machines()[DOCKER_BOX]["health"] == "online", 60)


def test_stopping_the_agent_stops_its_container(env: Env) -> None:
    """Last (it stops the docker agent): SIGTERM mid-job ends the job and removes the
    container; nothing is left running on the engine."""
    s = env.stack
    job_id = env.run(["sh", "-c", "echo up; sleep 300"])
    wait_for("the job to run", lambda: any(x == "up" for x in env.logs(job_id)), 120)
    assert f"cshare-job-{job_id}" in env.job_containers()
    agent = s.agents[DOCKER_BOX]
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=60)
    wait_for("the container to be removed", lambda: env.job_containers() == [], 30)
    job = s.wait_final(job_id, 60)
    assert job["state"] in ("crashed", "cancelled"), job
