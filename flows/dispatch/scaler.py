"""The scaler: starts and stops the machines of elastic machine types (docs/elastic.md).

One loop per control plane; among replicas only the holder of the `scaler` lease works
(flows.dispatch.leases). Every `CSHARE_ELASTIC_INTERVAL_S`, for each capacity provider
(orgs.capacity):

1. **look**: its machines (phase, heartbeat, jobs on them from the ledger and the
   agent's report, whether the launcher still runs them) and the work waiting for a
   machine of the type (released jobs no machine has claimed); note when a machine
   came online and since when it is idle;
2. **decide**: `policies.scaling.decide` (a detached provider is decided with min and
   max 0, so its machines drain and stop);
3. **act**: replace crashed machines (stop what is left, revoke the token), drain,
   stop idle ones, start new ones. A stop first marks the machine `draining` under the
   organization lock and re-checks the ledger, so a job claimed at that moment is never
   killed: claims on a draining machine are skipped (flows.claims) and it stops once idle.

Each start, drain, stop and replacement is an audit event. A launcher failure is logged
and the next pass tries again; the lease makes sure only one replica acts.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from sqlalchemy import func, select

from flows.dispatch import leases
from flows.dispatch.service import Service
from flows.models import CANCELLING, RUNNING, SCHEDULED, Job
from orgs import audit, capacity, settings_doc
from orgs.config import Settings
from orgs.db import Database, utcnow
from orgs.launchers import DockerLauncher, Launcher, LaunchSpec, ProcessLauncher
from orgs.machines import Health, health_of
from orgs.models import CapacityProvider, Machine, Organization, ProvisionedMachine
from policies.errors import DomainError
from policies.scaling import MachineFacts, Phase, Plan, Scale, ScaleSnapshot, Stop, decide

__all__ = ["LEASE_NAME", "Scaler", "ScalerReport"]

log = logging.getLogger(__name__)

LEASE_NAME: Final = "scaler"
_ON_A_MACHINE: Final = (RUNNING, CANCELLING)


@dataclass
class ScalerReport:
    started: int = 0
    stopped: int = 0
    drained: int = 0
    replaced: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Look:
    provider_id: uuid.UUID
    org_slug: str
    scale: Scale
    facts: tuple[MachineFacts, ...]
    handles: Mapping[uuid.UUID, Mapping[str, object]]
    waiting: int
    detached: bool
    kind: str


class Scaler(Service):
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        holder: str | None = None,
        launchers: Mapping[str, Launcher] | None = None,
    ) -> None:
        interval = settings.elastic_interval_s
        super().__init__("scaler", max(0.05, interval), enabled=interval > 0, stop_timeout_s=60)
        self.db = db
        self.settings = settings
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        base = settings.elastic_work_dir or settings.home / "elastic"
        self.launchers: Mapping[str, Launcher] = launchers or {
            "process": ProcessLauncher(base),
            "docker": DockerLauncher(),
        }

    def should_run(self) -> bool:
        return leases.acquire(
            self.db, LEASE_NAME, self.holder, self.settings.dispatcher_lease_ttl_s
        )

    def on_stopped(self) -> None:
        # The machines keep running: a restarted (or another) control plane adopts them.
        leases.release(self.db, LEASE_NAME, self.holder)

    @property
    def api_url(self) -> str:
        return (self.settings.elastic_api_url or self.settings.public_url).rstrip("/")

    # -- one pass ----------------------------------------------------------------------

    def run_once(self) -> ScalerReport:
        report = ScalerReport()
        with self.db.session(write=False) as s:
            ids = list(s.scalars(select(CapacityProvider.id).order_by(CapacityProvider.id)))
        for provider_id in ids:
            try:
                self._scale(provider_id, report)
            except DomainError as exc:
                report.errors.append(exc.detail)
                log.warning("scaler: provider %s: %s", provider_id, exc.detail)
        return report

    def _scale(self, provider_id: uuid.UUID, report: ScalerReport) -> None:
        look = self._look(provider_id)
        if look is None:
            return
        if look.detached and not look.facts:
            with self.db.transaction() as s:
                provider = s.get(CapacityProvider, provider_id)
                if provider is not None and provider.detached:
                    s.delete(provider)
            return
        plan = decide(ScaleSnapshot(look.scale, look.facts, look.waiting, utcnow()))
        for stop in plan.replace:
            self._replace(look, stop, report)
        for stop in plan.drain:
            self._drain(look, stop, report)
        for stop in plan.stop:
            self._stop(look, stop, report)
        for _ in range(plan.start):
            self._start(provider_id, look, plan, report)

    # -- 1. look -----------------------------------------------------------------------

    def _look(self, provider_id: uuid.UUID) -> _Look | None:
        now = utcnow()
        with self.db.transaction() as s:
            provider = s.get(CapacityProvider, provider_id)
            org = s.get(Organization, provider.org_id) if provider is not None else None
            if provider is None or org is None:
                return None
            offline_after = settings_doc.load(org.settings).machines.offline_after_s
            records = list(
                s.scalars(
                    select(ProvisionedMachine).where(ProvisionedMachine.provider_id == provider.id)
                )
            )
            ids = [r.machine_id for r in records]
            machines = {m.id: m for m in s.scalars(select(Machine).where(Machine.id.in_(ids)))}
            on_machine: dict[uuid.UUID | None, int] = {
                machine_id: int(count)
                for machine_id, count in s.execute(
                    select(Job.machine_id, func.count())
                    .where(Job.machine_id.in_(ids), Job.state.in_(_ON_A_MACHINE))
                    .group_by(Job.machine_id)
                ).all()
            }
            waiting = (
                s.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(
                        Job.org_id == org.id,
                        Job.machine_type == provider.machine_type,
                        Job.state == SCHEDULED,
                        Job.claimed_at.is_(None),
                    )
                )
                or 0
            )
            facts: list[MachineFacts] = []
            handles: dict[uuid.UUID, Mapping[str, object]] = {}
            for r in records:
                m = machines.get(r.machine_id)
                online = m is not None and health_of(m, offline_after, now) is Health.online
                busy = max(
                    int(on_machine.get(r.machine_id, 0)),
                    m.running_jobs if m is not None and online else 0,
                )
                # Bookkeeping: online for the first time, idle since when.
                if online and not r.ever_online:
                    r.ever_online = True
                if online and r.phase == Phase.starting:
                    r.phase = Phase.ready.value
                if busy or not online:
                    r.idle_since = None
                elif r.idle_since is None:
                    r.idle_since = now
                handles[r.machine_id] = dict(r.handle or {})
                facts.append(
                    MachineFacts(
                        id=r.machine_id,
                        name=r.name,
                        phase=Phase(r.phase),
                        started_at=r.started_at,
                        alive=m is not None,  # the launcher's view is added below
                        online=online,
                        ever_online=r.ever_online,
                        busy=busy,
                        idle_since=r.idle_since,
                    )
                )
            scale = Scale(
                min_scale=0 if provider.detached else provider.min_scale,
                max_scale=0 if provider.detached else provider.max_scale,
                grace_period_s=provider.grace_period_s,
                slots=provider.slots,
                start_timeout_s=self.settings.elastic_start_timeout_s,
            )
            kind, slug, detached = provider.kind, org.slug, provider.detached
        launcher = self.launchers[kind]
        # Outside the transaction: a launcher may ask a remote engine. A machine with
        # no handle yet is being launched right now (by this loop), so it is alive.
        checked = tuple(
            f
            if not f.alive or not handles[f.id]
            else replace(f, alive=launcher.alive(handles[f.id]))
            for f in facts
        )
        return _Look(provider_id, slug, scale, checked, handles, waiting, detached, kind)

    # -- 3. act ------------------------------------------------------------------------

    def _launcher(self, look: _Look) -> Launcher:
        return self.launchers[look.kind]

    def _replace(self, look: _Look, stop: Stop, report: ScalerReport) -> None:
        handle = look.handles.get(stop.machine_id) or {}
        if handle:
            try:
                self._launcher(look).stop(handle)  # whatever is left of it
            except DomainError as exc:
                log.warning("scaler: could not stop the rest of a crashed machine: %s", exc)
        with self.db.transaction() as s:
            record = s.get(ProvisionedMachine, stop.machine_id)
            if record is not None:
                capacity.retire(
                    s, record, action="machine.replaced", rule=stop.rule, reason=stop.reason
                )
        report.replaced += 1
        log.info("scaler: replaced %s: %s", stop.machine_id, stop.reason)

    def _drain(self, look: _Look, stop: Stop, report: ScalerReport) -> None:
        with self.db.transaction() as s:
            record = s.get(ProvisionedMachine, stop.machine_id)
            if record is None or record.phase == Phase.draining:
                return
            record.phase = Phase.draining.value
            audit.record(
                s,
                org_id=record.org_id,
                actor=None,
                action="machine.draining",
                target_type="machine",
                target_id=record.machine_id,
                before={"name": record.name},
                after={"rule": stop.rule, "reason": stop.reason},
            )
        report.drained += 1

    def _stop(self, look: _Look, stop: Stop, report: ScalerReport) -> None:
        # Draining first, under the org lock the claims take: from the commit on no
        # claim lands on it; a job claimed just before shows in the ledger here.
        with self.db.transaction() as s:
            record = s.get(ProvisionedMachine, stop.machine_id)
            if record is None:
                return
            s.execute(
                select(Organization.id).where(Organization.id == record.org_id).with_for_update()
            )
            busy = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.machine_id == record.machine_id, Job.state.in_(_ON_A_MACHINE))
            )
            record.phase = Phase.draining.value
        if busy:
            report.drained += 1
            return  # FinishDraining stops it once its jobs end
        handle = look.handles.get(stop.machine_id) or {}
        if handle:
            self._launcher(look).stop(handle)
        with self.db.transaction() as s:
            record = s.get(ProvisionedMachine, stop.machine_id)
            if record is not None:
                capacity.retire(
                    s, record, action="machine.scaled_down", rule=stop.rule, reason=stop.reason
                )
        report.stopped += 1
        log.info("scaler: stopped %s: %s", stop.machine_id, stop.reason)

    def _start(self, provider_id: uuid.UUID, look: _Look, plan: Plan, report: ScalerReport) -> None:
        why = "; ".join(plan.why) or "scaling"
        with self.db.transaction() as s:
            provider = s.get(CapacityProvider, provider_id)
            org = s.get(Organization, provider.org_id) if provider is not None else None
            if provider is None or org is None or provider.detached:
                return
            made = capacity.provision(s, provider, org, why=why)
            spec = LaunchSpec(
                machine_id=made.machine.id,
                name=made.machine.name,
                org=org.slug,
                machine_type=provider.machine_type,
                slots=provider.slots,
                token=made.token,
                api_url=self.api_url,
                config=dict(provider.config),
            )
            kind = provider.kind
        try:
            handle = self.launchers[kind].start(spec)
        except (DomainError, OSError) as exc:
            detail = exc.detail if isinstance(exc, DomainError) else str(exc)
            with self.db.transaction() as s:
                record = s.get(ProvisionedMachine, spec.machine_id)
                if record is not None:
                    capacity.retire(
                        s,
                        record,
                        action="machine.replaced",
                        rule="launch_failed",
                        reason=f"Its agent could not be started: {detail}",
                    )
            report.errors.append(detail)
            log.warning("scaler: could not start machine %s: %s", spec.name, detail)
            return
        with self.db.transaction() as s:
            record = s.get(ProvisionedMachine, spec.machine_id)
            if record is not None:
                record.handle = handle
        report.started += 1
        log.info("scaler: started %s (%s): %s", spec.name, kind, why)
