"""`cshare up --demo`: register the shipped flows and submit a few jobs, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx

from api.cli.up.errors import StackError

DEMO_MACHINE_TYPE: Final = "cpu"


# Jobs `--demo` submits: a few short trainings and one ETL run.
DEMO_JOBS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("train", {"epochs": 10}),
    ("train", {"epochs": 20, "learning_rate": 0.05}),
    ("train", {"epochs": 30}),
    ("etl", {"rows": 2000}),
)


def code_dir() -> str:
    """The folder holding the `flows` package: the shipped flows' entrypoints are relative
    to it (the repository checkout, or site-packages for a plain install)."""
    import flows.library

    return str(Path(flows.library.__file__).resolve().parents[2])


def run_demo(api_url: str, token: str, org: str) -> Iterator[str]:
    """Register the shipped flows as deployments of `org` and submit `DEMO_JOBS`."""
    from flows.library import SHIPPED_FLOWS

    headers = {"Authorization": f"Bearer {token}"}
    base = f"{api_url}/api/v1/orgs/{org}"
    with httpx.Client(headers=headers, timeout=60) as client:
        for name, entrypoint in SHIPPED_FLOWS.items():
            r = client.post(
                f"{base}/deployments",
                json={
                    "name": name,
                    "entrypoint": entrypoint,
                    "path": code_dir(),
                    "machine_type": DEMO_MACHINE_TYPE,
                    "description": f"Shipped example flow '{name}' (registered by --demo).",
                },
            )
            if r.status_code not in (200, 201):
                raise StackError(f"registering deployment {name}: HTTP {r.status_code} {r.text}")
            yield f"deployment {name} registered"
        for deployment, parameters in DEMO_JOBS:
            r = client.post(
                f"{base}/jobs", json={"deployment": deployment, "parameters": parameters}
            )
            if r.status_code not in (200, 201):
                raise StackError(f"submitting {deployment}: HTTP {r.status_code} {r.text}")
            job = r.json()
            yield f"job {job.get('id')} ({deployment}) submitted: {job.get('state')}"
