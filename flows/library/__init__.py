"""Flows shipped with Compute Share, runnable unchanged under plain Prefect.

Each module imports only prefect and the standard library (no server code), because it
runs on members' machines. This package deliberately does not import them: listing the
entrypoints costs nothing, importing a flow module costs a Prefect import.
"""

from __future__ import annotations

from typing import Final

# Deployment name -> entrypoint, relative to the repository root (the working directory
# that prefect.yaml's pull step sets). Kept in step with prefect.yaml.
SHIPPED_FLOWS: Final[dict[str, str]] = {
    "command": "flows/library/command.py:command",
    "etl": "flows/library/etl.py:etl",
    "train": "flows/library/train.py:train",
}

__all__ = ["SHIPPED_FLOWS"]
