"""What a run lives under on a machine: the memory rlimit (in real child processes),
dying with the agent, the cgroup v2 layout (on a fake cgroup tree), and the messages
a run stopped at a limit ends with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agents import limits

PYTHON = sys.executable


def _child(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="rlimits as on Linux")
def test_the_rlimit_stops_an_allocation_beyond_the_limit() -> None:
    done = _child(
        """
        from agents import limits
        applied = limits.apply_rlimit(200)
        print(applied.method)
        small = bytearray(50 * 1024 * 1024)  # within the limit
        try:
            big = bytearray(400 * 1024 * 1024)
        except MemoryError:
            print("refused")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [limits.RLIMIT_METHOD, "refused"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_run_dies_with_its_agent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            PYTHON,
            "-c",
            textwrap.dedent(
                f"""
                import subprocess, sys, time
                child = subprocess.Popen([sys.executable, "-c", '''
                import os, time
                from agents import limits
                limits.die_with_parent(os.getppid())
                open({str(pid_file)!r}, "w").write(str(os.getpid()))
                time.sleep(60)
                '''])
                time.sleep(60)
                """
            ),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)  # the agent is killed ...
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
            assert time.monotonic() < deadline, "the run outlived its agent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _fake_cgroup_tree(tmp_path: Path, controllers: str = "cpu io memory pids") -> limits.CgroupV2:
    root = tmp_path / "cgroup"
    own = root / "user.slice" / "agent.scope"
    own.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.subtree_control").write_text("")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/user.slice/agent.scope\n")
    return limits.CgroupV2(root=root, proc_self_cgroup=proc)


def test_cgroup_v2_layout_and_limits_on_a_delegated_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cgroups = _fake_cgroup_tree(tmp_path)
    base = tmp_path / "cgroup" / "user.slice" / "agent.scope"
    real_write = Path.write_text

    def write(self: Path, data: str, *args: object, **kwargs: object) -> int:
        # cgroupfs turns '+memory' written to cgroup.subtree_control into 'memory'.
        if self.name == "cgroup.subtree_control":
            data = data.replace("+", "")
        return real_write(self, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", write)
    assert cgroups.setup() is True
    assert (base / "agent" / "cgroup.procs").read_text() == str(os.getpid())
    assert (base / "cgroup.subtree_control").read_text() == "memory"
    limit = cgroups.create_run("abc", 512)
    run = Path(str(limit.cgroup))
    assert limit.method == "cgroup v2" and run == base / "run-abc"
    assert (run / "memory.max").read_text() == str(512 * 1024 * 1024)
    assert (run / "memory.swap.max").read_text() == "0"
    limits.CgroupV2.join(str(run), 4242)
    assert (run / "cgroup.procs").read_text() == "4242"
    assert limits.CgroupV2.oom_killed(str(run)) is False
    (run / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert limits.CgroupV2.oom_killed(str(run)) is True


def test_cgroup_v2_is_not_used_where_it_cannot_limit_memory(tmp_path: Path) -> None:
    assert _fake_cgroup_tree(tmp_path, controllers="cpu pids").setup() is False
    v1_only = limits.CgroupV2(root=tmp_path, proc_self_cgroup=tmp_path / "none")
    assert v1_only.setup() is False
    # This development machine (cgroup v1): the rlimit it is.
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        assert limits.CgroupV2().setup() is False


def test_failure_messages_name_the_limit() -> None:
    memory = limits.MemoryLimit(400, "RLIMIT_DATA")
    assert limits.memory_failure_message(memory) == (
        "Flow run exceeded its memory limit of 400 MB (RLIMIT_DATA)."
    )
    assert "MemoryError" in limits.memory_failure_message(memory, "MemoryError: ")
    assert limits.runtime_failure_message(30) == (
        "Flow run exceeded max runtime 30 s and was stopped."
    )
