"""The flow the topology test runs a hundred times (tests/e2e/test_topology.py)."""

from __future__ import annotations

from prefect import flow


@flow
def quick(i: int = 0) -> int:
    return i
