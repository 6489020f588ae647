"""The flow behind command jobs (`cshare job run --image REF -- CMD...`).

A Compute Share worker never runs it: it sees the container in the claim and runs the
command with Docker (agents/container.py). It exists so the job has a Prefect
deployment and flow run like every other job; a worker of another type that picks the
run up fails it with this explanation instead of running anything.
"""

from __future__ import annotations

from prefect import flow


@flow(name="container-command")
def container_command(image: str, command: list[str], cpus: float | None = None) -> None:
    raise RuntimeError(
        f"This is a container job ({image}: {' '.join(command)}); it runs only under a "
        "Compute Share agent (`cshare agent start`) on a machine with a Docker engine."
    )
