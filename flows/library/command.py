"""Run a shell command as a Prefect flow, streaming its output into the run's logs.

Imports only prefect and the standard library: it runs unchanged on any machine with
Prefect, under a worker or called directly.
"""

from __future__ import annotations

import collections
import contextvars
import os
import shlex
import signal
import subprocess
import threading
import time
from typing import IO, Any

from prefect import flow, get_run_logger

# Lines of stderr quoted in the failure message, so the UI shows why without scrolling.
_STDERR_TAIL = 20
_KILL_GRACE_S = 5.0
_MAX_LINE = 10_000


class CommandFailed(RuntimeError):
    """The command exited non-zero (or was killed); the run ends Failed with this."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _pump(stream: IO[bytes], emit: Any, tail: collections.deque[str] | None) -> None:
    # One thread per stream: lines reach the log as they are written, in order per stream.
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if len(line) > _MAX_LINE:
            line = line[:_MAX_LINE] + " [line truncated]"
        emit(line)
        if tail is not None:
            tail.append(line)
    stream.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the command and everything it started (it leads its own process group)."""
    if proc.poll() is not None:
        return
    if os.name == "nt":  # no process groups; best effort
        proc.kill()
        proc.wait()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=_KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


@flow(name="command")
def command(
    command: str | list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: int | None = None,
) -> int:
    """Run `command` (a shell string, or an argv list run without a shell).

    stdout and stderr lines are logged at INFO as they arrive (stderr is where most
    tools, and Python's logging, write progress: logging it as warnings would be noise). `env` adds
    to (does not replace) the worker's environment. Exit code 0 returns 0; anything else
    fails the run with the exit code and the tail of stderr in the message. `timeout_s`
    kills the command (and its children) when exceeded.
    """
    logger = get_run_logger()
    shell = isinstance(command, str)
    shown = command if isinstance(command, str) else shlex.join(command)
    logger.info("$ %s", shown)
    proc_env = {**os.environ, **(env or {})}
    started = time.monotonic()
    # A new session makes the command the leader of its own process group, so a timeout
    # or a cancellation (SIGTERM to this flow process) can stop the whole tree.
    proc = subprocess.Popen(
        command,
        shell=shell,  # running the user's shell command is the point
        cwd=cwd,
        env=proc_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
    assert proc.stdout is not None and proc.stderr is not None
    # Each pump runs in a copy of this context: Prefect keeps the run and its settings
    # (API URL, auth) in context variables, which plain threads would not see.
    pumps = [
        threading.Thread(
            target=contextvars.copy_context().run,
            args=(_pump, stream, logger.info, tail),
            daemon=True,
        )
        for stream, tail in ((proc.stdout, None), (proc.stderr, stderr_tail))
    ]
    for pump in pumps:
        pump.start()
    timed_out = False
    try:
        try:
            exit_code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
            exit_code = proc.wait()
    finally:
        # Also reached on cancellation: Prefect turns SIGTERM into an exception here.
        _stop(proc)
        for pump in pumps:
            pump.join(timeout=_KILL_GRACE_S)

    elapsed = time.monotonic() - started
    if timed_out:
        raise CommandFailed(
            f"Command timed out after {timeout_s} s and was killed: {shown}", exit_code
        )
    if exit_code != 0:
        reason = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}"
        message = f"Command failed with {reason} after {elapsed:.1f} s: {shown}"
        if stderr_tail:
            message += "\nLast stderr lines:\n" + "\n".join(stderr_tail)
        raise CommandFailed(message, exit_code)
    logger.info("Command finished with exit code 0 after %.1f s", elapsed)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(command(sys.argv[1:] or "echo hello from command"))
