"""Job variables that carry a claim's limits into a Prefect docker work pool.

Where an organization's pool for a machine type is a docker pool (prefect-docker's
worker), the limits a claim grants become the container's own: `mem_limit` and
`memswap_limit` (no swap beyond the limit), and the image to run. The max runtime is
not a docker setting; it travels as an environment variable and is enforced by the
worker's watchdog, as for process pools.

Running it needs `pip install prefect-docker` and a docker engine on the machine:

    cshare agent start --pool-type docker --machine-type gpu

This CI machine has no docker engine, so the tests check the generated configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["DEFAULT_IMAGE", "docker_job_variables"]

DEFAULT_IMAGE: Final = "prefecthq/prefect:3.8.8-python3.11"


def docker_job_variables(
    *,
    memory_mb: int,
    max_runtime_s: int,
    image: str | None = None,
    base: Mapping[str, Any] | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Job variables for prefect-docker's worker, merged over `base` (the deployment's).

    The claim's memory limit always wins over a deployment's own `mem_limit`: a member
    cannot raise their job's memory by editing job variables in Prefect.
    """
    variables: dict[str, Any] = dict(base or {})
    env = dict(variables.get("env") or {})
    env["CSHARE_MEMORY_MB"] = str(memory_mb)
    env["CSHARE_MAX_RUNTIME_S"] = str(max_runtime_s)
    if job_id:
        env["CSHARE_JOB_ID"] = job_id
    labels = dict(variables.get("labels") or {})
    if job_id:
        labels["io.compute-share.job-id"] = job_id
    variables.update(
        image=image or variables.get("image") or DEFAULT_IMAGE,
        mem_limit=f"{memory_mb}m",
        memswap_limit=f"{memory_mb}m",
        env=env,
        labels=labels,
        auto_remove=variables.get("auto_remove", True),
    )
    return variables
