"""Prefect's `prefect.collections` entry point for Compute Share (see pyproject.toml).

Prefect imports this module when it looks for worker types, as it does for
prefect-docker (whose entry point names its package, whose `__init__` imports
`DockerWorker`). Importing the worker class registers its `type`, "cshare", so
`prefect worker start --type cshare --pool <org>-<type>` and `prefect work-pool create
--type cshare` find it.
"""

from __future__ import annotations

from agents.worker import CshareWorker

__all__ = ["CshareWorker"]
