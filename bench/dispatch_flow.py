"""The trivial flow `bench.dispatch` runs: all cost is dispatch and process start."""

from __future__ import annotations

from prefect import flow


@flow
def noop() -> int:
    return 1
