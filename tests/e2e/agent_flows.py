"""Flows the agent end-to-end tests deploy (run on the agents from this directory)."""

from __future__ import annotations

import os
import time

from prefect import flow


@flow
def job_id_here() -> str:
    return os.environ.get("CSHARE_JOB_ID", "")


@flow
def trivial() -> str:
    """Returns the job id the agent gave the run, from a subflow: a subflow run is made
    through the Prefect proxy with the job's own credential."""
    return job_id_here()


@flow
def hog(mb: int = 500) -> int:
    """Allocates `mb` MB at once."""
    data = bytearray(mb * 1024 * 1024)
    return len(data)


@flow
def sleeper(seconds: float = 60) -> float:
    time.sleep(seconds)
    return seconds


@flow
def env_dump(out: str) -> None:
    """Writes what the job can see of its environment to `out` (a JSON file): its
    variables, its working directory, and the environment its process (a warm process)
    and its parent (the job's reaper) were started with."""
    import json
    from pathlib import Path

    def started_with(pid: int) -> dict[str, str]:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
        return {k: v for k, _, v in pairs}

    Path(out).write_text(
        json.dumps(
            {
                "env": dict(os.environ),
                "cwd": os.getcwd(),
                "started_with": started_with(os.getpid()),
                "parent_started_with": started_with(os.getppid()),
            }
        )
    )


@flow
def spawner(pid_file: str, seconds: float = 600) -> None:
    """Starts a grandchild (`sleep 1000`), writes both pids to `pid_file`, then sleeps."""
    import json
    import subprocess
    from pathlib import Path

    child = subprocess.Popen(["sleep", "1000"])
    Path(pid_file).write_text(json.dumps({"flow": os.getpid(), "child": child.pid}))
    time.sleep(seconds)
