"""A job's processes die with it (agents.reaper, agents.job_groups), with real processes:

- the reaper kills the job's whole process group, grandchildren included, when the
  agent dies (kill -9), and kills what the job left behind when it ends normally,
  exiting as the engine did;
- the record of running jobs: written and cleared, and at start-up the leftovers of a
  dead agent are killed, never a recycled pid, never a live agent's job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.job_groups import JobGroups, process_start_time

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process groups and /proc as on Linux"
)

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < deadline, [p for p in pids if not _gone(p)]
        time.sleep(0.05)


def _wait_file(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    time.sleep(0.05)
    return path.read_text()


@pytest.fixture
def group() -> Iterator[subprocess.Popen[bytes]]:
    """A process group of our own: a leader and its child, both sleeping."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 1000 & wait"], start_new_session=True, stdin=subprocess.DEVNULL
    )
    yield leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()


def _members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid and not _gone(int(entry.name)):
                found.append(int(entry.name))
    return found


# ----------------------------------------------------------------------- the record


def test_jobs_are_recorded_while_they_run_and_forgotten(
    tmp_path: Path, group: subprocess.Popen[bytes]
) -> None:
    groups = JobGroups.for_worker(tmp_path, "http://api", "lab-cpu", "cshare-box")
    recorded = groups.record("run1", group.pid, "/sys/fs/cgroup/x/run-run1")
    assert recorded is not None and recorded.agent_pid == os.getpid()
    assert recorded.start == process_start_time(group.pid)
    assert groups.load() == {"run1": recorded}
    assert groups.path.stat().st_mode & 0o077 == 0  # private
    # Another identity (another agent sharing the home) has its own file.
    other = JobGroups.for_worker(tmp_path, "http://api", "lab-gpu", "cshare-box")
    assert other.path != groups.path and other.load() == {}
    groups.forget("run1")
    assert groups.load() == {}
    assert groups.record("gone", 2**22 + 12345) is None  # no such process


def test_a_dead_agents_leftovers_are_killed_at_start(
    tmp_path: Path, group: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 10
    while len(_members(group.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    members = _members(group.pid)
    dead_agent = subprocess.Popen(["true"])
    dead_agent.wait()
    groups = JobGroups(tmp_path / "jobs.json")
    groups.record("left", group.pid, agent_pid=dead_agent.pid)
    assert groups.kill_leftovers() == ["left"]
    _wait_gone(members, 5)
    assert groups.load() == {}


def test_a_recycled_pid_is_never_killed(tmp_path: Path, group: subprocess.Popen[bytes]) -> None:
    groups = JobGroups(tmp_path / "jobs.json")
    recorded = groups.record("old", group.pid, agent_pid=1 << 22)
    assert recorded is not None
    # The same pid, started at another time: not the recorded process.
    data = json.loads(groups.path.read_text())
    data["old"]["start"] = recorded.start - 1
    groups.path.write_text(json.dumps(data))
    assert groups.kill_leftovers() == []
    assert not _gone(group.pid)
    assert groups.load() == {}  # cleared all the same


def test_a_live_agents_jobs_are_left_alone(tmp_path: Path, group: subprocess.Popen[bytes]) -> None:
    other_agent = subprocess.Popen(["sleep", "30"])
    try:
        groups = JobGroups(tmp_path / "jobs.json")
        groups.record("theirs", group.pid, agent_pid=other_agent.pid)
        assert groups.kill_leftovers() == []
        assert not _gone(group.pid)
        assert "theirs" in groups.load()
    finally:
        other_agent.kill()
        other_agent.wait()


def test_a_damaged_record_is_ignored(tmp_path: Path) -> None:
    groups = JobGroups(tmp_path / "jobs.json")
    groups.path.write_text("{not json")
    assert groups.kill_leftovers() == []
    groups.path.write_text(json.dumps({"x": {"pgid": "nope"}}))
    assert groups.load() == {}


# ------------------------------------------------------------------------ the reaper

# A stand-in for the agent: starts a job's reaper as the worker does (its own session,
# the spec on stdin), prints the reaper's pid, then waits to be killed.
FAKE_AGENT = """
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.getcwd(),
       "CSHARE_HOST_PARENT": str(os.getpid())}
reaper = subprocess.Popen([sys.executable, "-m", "agents.reaper"], stdin=subprocess.PIPE,
                          env=env, start_new_session=True)
reaper.stdin.write((json.dumps(spec) + "\\n").encode())
reaper.stdin.close()
print(reaper.pid, flush=True)
print(reaper.wait(), flush=True)
"""


def _fake_agent(tmp_path: Path, command: str) -> subprocess.Popen[str]:
    spec = {"env": {"PATH": os.environ["PATH"]}, "cwd": str(tmp_path), "command": command}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(FAKE_AGENT), json.dumps(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_the_job_dies_with_its_agent_grandchildren_included(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The engine (here a shell, as a custom command) starts a grandchild.
    agent = _fake_agent(tmp_path, f"sh -c 'sleep 1000 & echo $$ $! > {pids}; wait'")
    try:
        assert agent.stdout is not None
        reaper = int(agent.stdout.readline())
        engine, grandchild = map(int, _wait_file(pids).split())
        assert os.getpgid(grandchild) == reaper  # one group, led by the reaper
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(timeout=10)
        _wait_gone([reaper, engine, grandchild], 10)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_the_reaper_exits_as_the_engine_did_and_leaves_nothing(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    agent = _fake_agent(tmp_path, f"sh -c 'sleep 1000 & echo $! > {pids}; exit 7'")
    out, _ = agent.communicate(timeout=60)
    _reaper, code = map(int, out.split())
    assert code == 7
    _wait_gone([int(pids.read_text())], 5)  # the flow's leftover died with the job
    killed = _fake_agent(tmp_path, "sh -c 'kill -TERM $$'")
    out, _ = killed.communicate(timeout=60)
    assert int(out.split()[1]) == -signal.SIGTERM
