"""A flow-run process started ahead of time, so a released job starts in under a second.

Importing Prefect takes ~2.5 s of CPU on the 2-core development machine, which is most
of the time between "a job is released" and "it runs" with a stock process worker. Our
worker therefore keeps one process (per free slot, up to `warm_processes`) that has
already imported Prefect's engine and waits on stdin. When the worker has claimed a
run, it writes one JSON line, the run's spec, and closes stdin:

    {"env": {...}, "cwd": "...", "command": null | "...", "memory": {...} | null,
     "stream_output": true}

This process then applies the run's limits to itself (memory cgroup or rlimit), takes
the run's environment and working directory, and runs `prefect.engine` for the run as
if it had been started as `python -m prefect.engine`: same PID for the worker to watch
and signal, same exit codes. When the run's environment asks for Prefect settings other
than those imported with (or for a custom command), it `exec`s the cold command instead
after applying the limits, so correctness never depends on the warm path.

Its parent is the job's reaper (agents.reaper), the leader of the job's process group:
stopping the group stops everything the flow started, and the reaper kills the group
when the agent dies. This process dies with the reaper (`PR_SET_PDEATHSIG`).

It starts with the part of a job's environment common to all runs (agents.job_env, no
job's credential); the run's own Prefect key and home (`PER_RUN_SETTINGS`) are read
when the run starts, so they do not force a cold start.
"""

from __future__ import annotations

import json
import os
import runpy
import shlex
import signal
import sys
import tempfile
import warnings
from typing import Any

from agents import limits

# Modules a run needs that are slow to import (measured with -X importtime).
_WARM_MODULES = (
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.flows",
    "prefect.tasks",
    "prefect.task_engine",
    "prefect.results",
    "prefect.deployments.steps",
    "prefect.deployments.steps.core",
    "prefect.client.orchestration",
    "prefect._internal.metrics",
    "prefect.logging.handlers",
    "prefect.runner.storage",
    "prefect.task_runners",
    # Imported while a run starts (found with -X importtime on a warm process).
    "pydantic.v1",
    "anyio._backends._asyncio",
    "anyio.streams.memory",
    "encodings.idna",
    "rich._emoji_codes",
)


# Settings Prefect reads through its settings context only (refreshed for the run),
# never at import: a run's own values need no cold start.
PER_RUN_SETTINGS = frozenset({"PREFECT_API_KEY", "PREFECT_HOME"})


def _settings_env(env: dict[str, str]) -> dict[str, str]:
    # PREFECT_X is read when Prefect is imported; PREFECT__X (two underscores) is
    # per-run plumbing read at run time (run id, control channel).
    return {
        k: v
        for k, v in env.items()
        if k.startswith("PREFECT_") and k[7:8] != "_" and k not in PER_RUN_SETTINGS
    }


def _warm_up() -> None:
    import importlib

    for name in _WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: S112 - a missing optional module only costs speed
            continue


def _silence_output() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _apply_memory(spec: dict[str, Any]) -> None:
    memory = spec.get("memory")
    if not memory:
        return
    if memory.get("cgroup"):
        limits.CgroupV2.join(memory["cgroup"])
    else:
        limits.apply_rlimit(int(memory["memory_mb"]))


def _exec_cold(spec: dict[str, Any], env: dict[str, str]) -> None:
    command = spec.get("command")
    argv = shlex.split(command) if command else [sys.executable, "-m", "prefect.engine"]
    os.execvpe(argv[0], argv, env)  # noqa: S606 - the run's own command, like Prefect's


def run(spec: dict[str, Any], startup_env: dict[str, str]) -> None:
    env: dict[str, str] = {k: str(v) for k, v in spec["env"].items() if v is not None}
    os.chdir(spec["cwd"])
    if not spec.get("stream_output", True):
        _silence_output()
    _apply_memory(spec)
    if spec.get("command") or _settings_env(env) != _settings_env(startup_env):
        _exec_cold(spec, env)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # the run's TMPDIR, not the one seen at start-up
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()  # the run's PER_RUN_SETTINGS
    for entry in reversed(env.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    flow_run_id = env.get("PREFECT__FLOW_RUN_ID", "")
    sys.argv = ["prefect.engine", flow_run_id]
    # runpy warns that the module it runs as __main__ was imported already: on purpose.
    warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    finally:
        # The run is over: a stop signal arriving now (the agent stopping a run that
        # Prefect's cancellation had just stopped) ends the process quietly, instead of
        # raising Prefect's TerminationSignal inside its exit handlers (a traceback).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main() -> None:
    parent = os.environ.get("CSHARE_HOST_PARENT", "")
    limits.die_with_parent(int(parent) if parent.isdigit() else None)
    startup_env = dict(os.environ)
    _warm_up()
    line = sys.stdin.readline()
    if not line.strip():
        return  # the worker no longer needs this process
    run(json.loads(line), startup_env)


if __name__ == "__main__":
    main()
