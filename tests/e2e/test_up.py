"""The README's first command, end to end: `.venv/bin/cshare up` on a fresh CSHARE_HOME in
a subprocess; wait for the printed URLs; sign in with the printed credentials and run the
printed next commands through the CLI; see the job complete on the local agent; stop
with SIGINT and check that no process the stack started is left."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as field_
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli.up.postgres import SYSTEM_ROOT, EmbeddedPostgres
from api.cli.up.processes import alive, descendants, start_time

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CSHARE = Path(sys.executable).parent / "cshare"
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300.0
JOB_TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _missing_commands() -> list[str]:
    from api.cli.main import app

    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    return [name for name in ("agent", "deploy", "job") if name not in commands]


class Output:
    """The stack's stdout, collected by a thread so the pipe never fills up."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout_s: float, process: subprocess.Popen[bytes]) -> str:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text:
            if process.poll() is not None:
                pytest.fail(f"`cshare up` exited {process.returncode}:\n{self.text}")
            if time.monotonic() > deadline:
                pytest.fail(f"no '{needle}' after {timeout_s} s:\n{self.text}")
            time.sleep(0.2)
        return self.text


def field(text: str, label: str) -> str:
    match = re.search(rf"^\s*{re.escape(label)}:\s+(\S+)", text, re.MULTILINE)
    assert match, f"no '{label}:' in\n{text}"
    return match.group(1)


@dataclass
class RunningUp:
    """A `cshare up` started by `running_up`, and every process seen under it."""

    home: Path
    env: dict[str, str]
    api: str
    process: subprocess.Popen[bytes]
    out: Output
    recorded: dict[int, int | None] = field_(default_factory=dict)

    def record(self) -> None:
        for pid in descendants(self.process.pid):
            self.recorded.setdefault(pid, start_time(pid))

    def stop(self, sig: signal.Signals) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)  # by the supervisor's PID
        try:
            return self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"`cshare up` did not stop on {sig.name}:\n{self.out.text}")


@contextlib.contextmanager
def running_up(tmp_path: Path, stop: signal.Signals) -> Iterator[RunningUp]:
    """`.venv/bin/cshare up` on a fresh CSHARE_HOME and free ports (the README's first
    command, last part), nothing in the real home. On leaving the block it is stopped with
    `stop` and, unless the block failed, must have stopped cleanly: exit 0, "Stopped."
    printed, no process it started left."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSHARE_", "PREFECT_"))}
    port = _free_port()
    env.update(
        CSHARE_HOME=str(home),
        CSHARE_PORT=str(port),
        CSHARE_PREFECT_PORT=str(_free_port()),
        CSHARE_CONFIG=str(tmp_path / "cli" / "config.toml"),
        HOME=str(tmp_path),
        COLUMNS="200",
    )
    process = subprocess.Popen(
        [str(CSHARE), "up"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    up = RunningUp(home, env, f"http://127.0.0.1:{port}", process, Output(process.stdout))
    try:
        try:
            yield up
        except BaseException:
            up.stop(stop)
            raise
        code = up.stop(stop)
        assert code == 0, up.out.text
        assert "Stopped." in up.out.text
        left = [pid for pid, started in up.recorded.items() if alive(pid, started)]
        assert not left, f"processes left behind: {left}"
    finally:
        # As root the embedded PostgreSQL keeps its cluster outside the temp dir.
        cluster = EmbeddedPostgres(home).root
        if cluster.is_relative_to(SYSTEM_ROOT):
            shutil.rmtree(cluster, ignore_errors=True)


def test_cshare_up_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    missing = _missing_commands()
    if missing:
        pytest.skip(f"needs the `cshare {'`, `cshare '.join(missing)}` command(s), not built yet")
    with running_up(tmp_path, signal.SIGINT) as up:
        home, env, out, record = up.home, up.env, up.out, up.record
        text = out.wait_for("Press Ctrl-C to stop", START_TIMEOUT_S, up.process)
        record()
        docs, prefect_ui = field(text, "API docs"), field(text, "Prefect UI")
        email, password = field(text, "Admin"), field(text, "Password")
        assert httpx.get(docs, timeout=10).status_code == 200
        # The Prefect UI sits behind the console's login: signed out, it sends you there.
        ui = httpx.get(prefect_ui, timeout=10)
        assert ui.status_code == 303 and "/login" in ui.headers["location"], ui
        assert (home / "secrets" / "admin-password").stat().st_mode & 0o077 == 0
        assert (home / "secrets" / "prefect-auth").stat().st_mode & 0o077 == 0
        assert "no local agent" not in text, text
        assert re.search(r"ready in \d+\.\d s", text), text
        # Prefect keeps its data in the embedded PostgreSQL too, not in a SQLite file.
        assert not (home / "prefect" / "prefect.db").exists()

        # The printed next commands, as a person would type them.
        commands = [
            line.strip() for line in text.splitlines() if line.strip().startswith("cshare ")
        ]
        assert len(commands) == 3, text
        login, deploy, submit = (c.split() for c in commands)

        def cli(args: list[str], stdin: str | None = None) -> str:
            r = subprocess.run(
                [str(CSHARE), *args[1:]],
                env=env,
                cwd=REPO_ROOT,
                input=stdin.encode() if stdin else None,
                capture_output=True,
                timeout=180,
            )
            assert r.returncode == 0, f"{' '.join(args)}: {r.stdout.decode()}{r.stderr.decode()}"
            record()
            return r.stdout.decode()

        assert login[:2] == ["cshare", "login"] and email in login
        cli([*login, "--password-stdin"], stdin=password + "\n")
        cli(deploy)
        job = json.loads(cli([*submit, "--json"]))
        deadline = time.monotonic() + JOB_TIMEOUT_S
        state = job.get("state")
        while state != "completed":
            assert state not in ("failed", "crashed", "cancelled", "rejected"), job
            assert time.monotonic() < deadline, f"job still {state}:\n{out.text}"
            time.sleep(1)
            record()  # the flow run's own processes too
            job = json.loads(
                cli(["cshare", "job", "show", str(job["id"]), "--org", "demo", "--json"])
            )
            state = job.get("state")
        record()
        assert up.recorded, "the stack started no child process?"
    assert not (home / "stack.pid").exists()
