"""End-to-end tests: on failure, the logs of the processes a test ran with.

A failing e2e test is usually a timeout whose cause is in another process's log (the
API, Prefect's server, an agent). Any fixture value with a `diagnostics()` method
returning `{title: text}` gets those added to the failure report, so a CI failure
explains itself without a rerun.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when != "call" or not report.failed:
        return report
    for value in getattr(item, "funcargs", {}).values():
        diagnostics = getattr(value, "diagnostics", None)
        if not callable(diagnostics):
            continue
        try:
            sections = diagnostics()
        except Exception as exc:  # a report must never fail on its diagnostics
            sections = {"diagnostics": f"could not collect: {exc!r}"}
        for title, text in sections.items():
            report.sections.append((title, text))
    return report
