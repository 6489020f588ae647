"""Flows the agent end-to-end tests deploy (run on the agents from this directory)."""

from __future__ import annotations

import os
import time

from prefect import flow


@flow
def trivial() -> str:
    """Returns the job id the agent gave the run."""
    return os.environ.get("CSHARE_JOB_ID", "")


@flow
def hog(mb: int = 500) -> int:
    """Allocates `mb` MB at once."""
    data = bytearray(mb * 1024 * 1024)
    return len(data)


@flow
def sleeper(seconds: float = 60) -> float:
    time.sleep(seconds)
    return seconds
