"""`cshare up`'s supervision pieces without the stack: the restart arithmetic, the status
file, child logs with rotation, and a real (tiny) child restarted and stopped."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from api.cli.up.childlogs import ChildLog
from api.cli.up.errors import StackError
from api.cli.up.processes import alive, start_time
from api.cli.up.restarts import Backoff, RestartPolicy
from api.cli.up.status import (
    STATUS_FILE,
    ChildState,
    ChildStatus,
    StackState,
    StackStatus,
    iso,
    read_status,
    utcnow,
    write_status,
)
from api.cli.up.supervised import ChildSpec, Supervised

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the supervisor uses /proc")


# -- backoff ---------------------------------------------------------------------------


def test_delay_doubles_from_one_second_up_to_the_cap() -> None:
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert policy.delay(10_000) == 30  # no overflow for a child that crashed all year
    with pytest.raises(ValueError):
        policy.delay(0)


def test_backoff_grows_while_crashing_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(RestartPolicy())
    now = 1000.0
    delays = []
    for _ in range(4):
        delays.append(backoff.on_exit(up_for_s=3, now=now))
        now += 10
    assert delays == [1, 2, 4, 8]
    # Up 60 s or more: the next crash is a new incident, starting at 1 s again.
    assert backoff.on_exit(up_for_s=60, now=now + 60) == 1
    assert backoff.on_exit(up_for_s=59.9, now=now + 70) == 2


def test_five_exits_within_two_minutes_is_a_crash_loop_until_the_window_passes() -> None:
    backoff = Backoff(RestartPolicy())
    for i in range(4):
        backoff.on_exit(up_for_s=1, now=100.0 + i * 20)
        assert not backoff.crash_looping(100.0 + i * 20)
    backoff.on_exit(up_for_s=1, now=180.0)
    assert backoff.crash_looping(180.0)
    assert backoff.recent_exits(180.0) == 5
    # Two minutes after the first of them, only four are recent.
    assert not backoff.crash_looping(221.0)


def test_exits_spread_wider_than_the_window_are_no_loop() -> None:
    backoff = Backoff(RestartPolicy())
    for i in range(10):
        backoff.on_exit(up_for_s=1, now=i * 31.0)
    assert backoff.recent_exits(9 * 31.0) == 4
    assert not backoff.crash_looping(9 * 31.0)


# -- status file -----------------------------------------------------------------------


def test_status_file_round_trip_and_report(tmp_path: Path) -> None:
    started = utcnow() - timedelta(seconds=90)
    status = StackStatus(
        supervisor_pid=os.getpid(),
        supervisor_started=start_time(os.getpid()),
        state=StackState.RUNNING,
        updated_at=iso(utcnow()),
        children=[
            ChildStatus(
                name="prefect",
                title="Prefect server",
                state=ChildState.RUNNING,
                pid=4242,
                started_at=iso(started),
                restarts=1,
                last_exit_code=-9,
                last_exit_at=iso(started),
                log="/x/logs/prefect.log",
            ),
            ChildStatus(
                name="api",
                title="API",
                state=ChildState.RESTARTING,
                restarts=5,
                last_exit_code=1,
                restart_at=iso(utcnow()),
                crash_loop=True,
            ),
        ],
    )
    write_status(tmp_path, status)
    assert read_status(tmp_path) == status
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE]  # no temp file left

    report = status.report()
    assert report["supervisor_running"] is True
    prefect, api = report["children"]
    assert prefect["state"] == "running" and prefect["restarts"] == 1
    assert 89 <= prefect["uptime_s"] < 120
    assert api["uptime_s"] is None and api["crash_loop"] is True


def test_a_stopped_or_vanished_supervisor_is_not_running(tmp_path: Path) -> None:
    status = StackStatus(os.getpid(), start_time(os.getpid()), StackState.STOPPED, iso(utcnow()))
    assert not status.supervisor_alive()
    # Our PID, but another start time: the PID was recycled, the stack is gone.
    recycled = StackStatus(os.getpid(), -1, StackState.RUNNING, iso(utcnow()))
    assert not recycled.supervisor_alive()


def test_missing_and_broken_status_files(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    (tmp_path / STATUS_FILE).write_text("{not json")
    with pytest.raises(StackError, match="not a status file"):
        read_status(tmp_path)


# -- child logs ------------------------------------------------------------------------


def test_child_log_rotates_by_size_and_keeps_every_line(tmp_path: Path) -> None:
    log = ChildLog(tmp_path / "logs" / "x.log", max_bytes=2000, backups=3)
    for i in range(200):
        log.write(f"line {i:03d} " + "x" * 40)
    log.close()
    files = sorted((tmp_path / "logs").iterdir())
    assert [f.name for f in files] == ["x.log", "x.log.1", "x.log.2", "x.log.3"]
    assert all(f.stat().st_size <= 2000 for f in files)
    # The newest lines survive, in order, across the files.
    kept = [line for f in reversed(files) for line in f.read_text().splitlines()]
    assert 100 < len(kept) < 200  # the oldest rotated away
    assert kept == [f"line {i:03d} " + "x" * 40 for i in range(200 - len(kept), 200)]


# -- a real child, restarted and stopped ------------------------------------------------

FAST = RestartPolicy(first_delay_s=0.2, max_delay_s=0.4, crash_loop_exits=3)


def _spec(tmp_path: Path, code: str) -> ChildSpec:
    return ChildSpec(
        name="toy",
        title="Toy",
        args=[sys.executable, "-c", code],
        env={"PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
        log_path=tmp_path / "logs" / "toy.log",
    )


def _tick_until(
    slot: Supervised, said: list[str], done: Callable[[], bool], timeout_s: float = 15
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, said
        slot.tick(said.append)
        time.sleep(0.05)


def test_a_crashing_child_is_restarted_with_backoff_and_reported(tmp_path: Path) -> None:
    slot = Supervised(_spec(tmp_path, "print('hello', flush=True); raise SystemExit(3)"), FAST)
    said: list[str] = []
    slot.start()
    try:
        _tick_until(slot, said, lambda: slot.restarts >= 3 and slot.state is ChildState.RESTARTING)
    finally:
        slot.stop()
        slot.close()
    assert said[0] == "Toy exited (code 3); restarting in 0.2 s (restart 1)."
    assert said[1].startswith("Toy restarted (pid ")
    assert "Toy exited (code 3); restarting in 0.4 s (restart 2)." in said
    assert any(s.startswith("!!! Toy keeps crashing: 3 exits") for s in said), said
    status = slot.status()
    assert status.state is ChildState.STOPPED and status.pid is None
    assert status.last_exit_code == 3 and status.restarts == 3
    # Every run's output is in the one log.
    assert (tmp_path / "logs" / "toy.log").read_text().count("hello") >= 3


def test_stop_ends_the_child_and_what_it_started_and_never_restarts(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('up', flush=True); time.sleep(60)\n"
    )
    slot = Supervised(_spec(tmp_path, code), FAST)
    child = slot.start()
    said: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while "up" not in slot.log.tail():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.remember_descendants()
        grandchildren = dict(child.known)
        assert grandchildren
    finally:
        slot.stop()
    slot.tick(said.append)
    slot.close()
    assert said == [] and slot.state is ChildState.STOPPED
    assert not alive(child.pid)
    assert not [pid for pid, t in grandchildren.items() if alive(pid, t)]


def test_a_killed_childs_group_is_cleaned_up_before_the_restart(tmp_path: Path) -> None:
    # The child starts a grandchild and is SIGKILLed: the grandchild (still in the
    # child's process group) must not outlive it, as a crashed Prefect's would hold a port.
    code = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('grandchild', p.pid, flush=True); time.sleep(60)\n"
    )
    slot = Supervised(_spec(tmp_path, code), FAST)
    child = slot.start()
    said: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while "grandchild" not in slot.log.tail():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        grandchild = int(slot.log.tail().split("grandchild")[1].split()[0])
        started = start_time(grandchild)
        os.kill(child.pid, 9)
        _tick_until(slot, said, lambda: slot.state is ChildState.RESTARTING)
        assert said[0] == "Toy exited (code -9); restarting in 0.2 s (restart 1)."
        assert not alive(grandchild, started)
    finally:
        slot.stop()
        slot.close()


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    # A supervisor of its own (so the test can SIGKILL it) spawns a sleeping child: the
    # parent-death signal, set by the exec hop in `spawn`, must end the child.
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from api.cli.up.childlogs import ChildLog\n"
        "from api.cli.up.processes import spawn\n"
        "log = ChildLog(Path(sys.argv[1]))\n"
        "c = spawn('sleeper', [sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "          env={}, log=log, cwd=Path(sys.argv[2]))\n"
        "print(c.pid, flush=True); time.sleep(60)\n"
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "sleeper.log"), str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert supervisor.stdout is not None
        pid = int(supervisor.stdout.readline())
        started = start_time(pid)
        # Wait for the exec: killed before it, the hop itself would give up (a guard that
        # is not what this test is about).
        argv = f"{sys.executable}\0-c\0import time; time.sleep(60)\0"
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}/cmdline").read_text() != argv:
            assert time.monotonic() < deadline, Path(f"/proc/{pid}/cmdline").read_text()
            time.sleep(0.02)
        assert alive(pid, started)
    finally:
        supervisor.kill()
        supervisor.wait()
    deadline = time.monotonic() + 10
    while alive(pid, started):
        assert time.monotonic() < deadline, "the child outlived its supervisor"
        time.sleep(0.05)


def test_a_child_that_cannot_even_be_started_is_retried(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    spec = _spec(tmp_path, "raise SystemExit(1)")
    slot = Supervised(dataclasses.replace(spec, cwd=workdir), FAST)
    said: list[str] = []
    slot.start()
    workdir.rmdir()  # the next start fails in Popen itself
    try:
        _tick_until(slot, said, lambda: any("could not be started" in s for s in said))
    finally:
        slot.stop()
        slot.close()
    assert said[-1].startswith("Toy could not be started (")
    assert said[-1].endswith("retrying in 0.4 s.")
    assert slot.restarts == 0 and slot.state is ChildState.STOPPED
