"""Start-up wiring: the app runs every background service once, reports their health
on /healthz, stops them all on shutdown, and nothing registers itself on import."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

from datasets import catalog
from flows import claims, hooks
from orgs import cascade, machines, notifications, teams
from orgs.db import Database
from tests.integration.test_jobs_support import FakePrefect, jobs_app

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {"dispatcher", "notifications", "dataset-gc", "scaler"}
THREADS = {f"cshare-{name}" for name in EXPECTED}


def _service_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in THREADS and t.is_alive()]


def test_app_runs_each_service_once_and_stops_them_all(sqlite_database: Database) -> None:
    assert _service_threads() == []
    with jobs_app(
        sqlite_database,
        FakePrefect(),
        dispatcher_enabled=True,
        dispatcher_interval_s=0.1,
        notifications_enabled=True,
        dataset_gc_interval_s=3600.0,
        elastic_interval_s=0.1,
    ) as api:
        assert sorted(_service_threads()) == sorted(THREADS)  # each exactly once
        deadline = time.monotonic() + 10
        while True:
            body = api.client.get("/healthz").json()
            by_name = {s["name"]: s for s in body["services"]}
            if by_name["dispatcher"]["last_success_at"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert body["status"] == "ok"
        assert set(by_name) == EXPECTED and len(body["services"]) == len(EXPECTED)
        for s in by_name.values():
            assert s["enabled"] is True and s["running"] is True
            assert s["consecutive_failures"] == 0 and s["last_error"] is None
        # The dispatcher and the deliveries have worked; the GC waits its first hour.
        assert by_name["dispatcher"]["last_success_at"] is not None
        assert by_name["dataset-gc"]["last_success_at"] is None
        prefixed = api.client.get("/api/v1/healthz").json()["services"]
        assert {s["name"] for s in prefixed} == EXPECTED
    assert _service_threads() == []  # none left after shutdown


def test_disabled_services_are_reported_not_started(sqlite_database: Database) -> None:
    with jobs_app(
        sqlite_database,
        FakePrefect(),
        dispatcher_enabled=False,
        notifications_enabled=False,
        dataset_gc_interval_s=0,
        elastic_interval_s=0,
    ) as api:
        assert _service_threads() == []
        services = api.client.get("/healthz").json()["services"]
        assert {s["name"] for s in services} == EXPECTED
        assert not any(s["enabled"] or s["running"] for s in services)


def test_app_wires_every_cascade_hook_in_order(sqlite_database: Database) -> None:
    with jobs_app(sqlite_database, FakePrefect()):
        assert cascade._member_hooks == [
            machines.revoke_member_machines,
            notifications.member_left,
            catalog.drop_access_of_removed_member,
            teams.drop_member_teams,
            hooks.cancel_member_jobs,
        ]
        assert machines._revoked_hooks == [claims.mark_runs_for_cancellation]
        assert cascade._org_hooks == [
            machines.retire_org_machines,
            catalog.drop_org_datasets,
            hooks.forget_org_in_prefect,
            teams.drop_org_teams,
        ]


# Registration calls that must only be made by flows.wiring, never when a module loads.
_REGISTRARS = {
    "on_member_removed",
    "on_org_deleted",
    "on_machine_revoked",
    "register_input_hooks",
}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def test_no_module_registers_hooks_when_imported() -> None:
    offenders = []
    for package in ("api", "flows", "datasets", "orgs", "policies"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for node in ast.parse(path.read_text()).body:
                calls = [node.value] if isinstance(node, ast.Expr) else []
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    calls = list(node.decorator_list)
                offenders += [f"{rel}:{node.lineno}" for c in calls if _name(c) in _REGISTRARS]
    assert offenders == []
