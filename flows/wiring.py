"""What a control-plane process plugs together at start-up, listed in one place.

Nothing registers itself when imported: the cascade hooks (what removing a member or
deleting an organization does beyond orgs/) and the background services are all named
here, and `api.app` calls these at start-up (for `cshare server` and the API that
`cshare up` runs alike).
"""

from __future__ import annotations

from datasets import catalog
from flows import claims, hooks
from flows.dispatch.dispatcher import Dispatcher
from flows.dispatch.housekeeping import DatasetGarbageCollector
from flows.dispatch.scaler import Scaler
from flows.dispatch.service import Service
from flows.gateway import PrefectGateway
from orgs import cascade, machines, notifications, teams
from orgs.config import Settings
from orgs.db import Database


def wire_hooks() -> None:
    """Register every hook; idempotent (a second app in the same process re-registers)."""
    # Member removed, in this order: machines stop taking work, the `member.left`
    # notification is queued, dataset access lists forget them, they leave its teams,
    # their jobs end.
    for member_hook in (
        machines.revoke_member_machines,
        notifications.member_left,
        catalog.drop_access_of_removed_member,
        teams.drop_member_teams,
        hooks.cancel_member_jobs,
    ):
        cascade.on_member_removed(member_hook)
    # Organization deleted: its machines' tokens retired (their agents learn why), datasets
    # (their rows point at the org's stores), then jobs, schedules and deployments, with
    # the Prefect side queued for the dispatcher.
    for org_hook in (
        machines.retire_org_machines,
        catalog.drop_org_datasets,
        hooks.forget_org_in_prefect,
        teams.drop_org_teams,
    ):
        cascade.on_org_deleted(org_hook)
    # A rejected or removed machine's runs are to be cancelled (rows; Prefect after).
    machines.on_machine_revoked(claims.mark_runs_for_cancellation)


def services(db: Database, gateway: PrefectGateway, settings: Settings) -> list[Service]:
    """Every background loop of an API process, in start order (stopped in reverse).

    Disabled ones (settings) are listed too: their start() does nothing and the health
    report shows them as not enabled.
    """
    return [
        # Delivery first: whatever the dispatcher ends up emitting goes out promptly.
        notifications.Deliverer(db, settings),
        DatasetGarbageCollector(db, settings),
        # The job ledger and Prefect kept in step (reconcile, schedules, releases).
        Dispatcher(db, gateway, settings),
        # Elastic machine types: machines started and stopped for the work (lease holder).
        Scaler(db, settings),
    ]
