"""Elastic machine types: how many machines a capacity provider should run, decided by rules.

Pure decisions over a frozen snapshot (no database, no processes), in the manner of
Prefect's orchestration rules: each rule is a small named class that looks at the
snapshot and the plan so far and returns the plan it proposes. `decide` runs them in
`POLICY` order; the scaler (flows.dispatch.scaler) carries the plan out.

A machine of a provider is `starting` (launched, no heartbeat yet), `ready` (its agent
heartbeats) or `draining` (it takes no new work and is stopped once its jobs end).
`busy` counts the jobs on it (ledger and agent report, whichever is higher); `idle_since`
is when it last became idle (None while busy).

The rules, in order (docs/elastic.md):

1. ReplaceCrashed: its process or container is gone, it never heartbeated within the
   start timeout, or it went offline: forget it (credential revoked). The rules below
   then start a new one if one is needed.
2. ScaleUpForWaitingWork: released jobs of the type that no machine has claimed, beyond
   the free slots of ready and starting machines: start enough machines for them.
3. KeepMinimum: at least `min_scale` machines (not draining) at all times.
4. StopAfterGrace: a ready machine idle for `grace_period_s` stops, while no work waits
   and no further than `min_scale`.
5. CapAtMaximum: never more than `max_scale` machines: starts are cut, and machines
   beyond it (a lowered maximum, a detached provider) are stopped, idle ones first.
6. FinishDraining: a draining machine with no job left stops.
7. NeverStopBusy: a machine with a job is never stopped: a proposed stop becomes a drain.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ClassVar, Final

__all__ = [
    "POLICY",
    "CapAtMaximum",
    "FinishDraining",
    "KeepMinimum",
    "MachineFacts",
    "NeverStopBusy",
    "Phase",
    "Plan",
    "ReplaceCrashed",
    "Scale",
    "ScaleRule",
    "ScaleSnapshot",
    "ScaleUpForWaitingWork",
    "Stop",
    "StopAfterGrace",
    "decide",
]

DEFAULT_GRACE_S: Final = 15 * 60
DEFAULT_MAX_SCALE: Final = 5  # the product brief's default


class Phase(StrEnum):
    starting = "starting"
    ready = "ready"
    draining = "draining"


@dataclass(frozen=True, slots=True)
class Scale:
    """A provider's settings: machine counts, idle grace, slots per machine, and how
    long a started machine may take to heartbeat."""

    min_scale: int = 0
    max_scale: int = DEFAULT_MAX_SCALE
    grace_period_s: float = DEFAULT_GRACE_S
    slots: int = 1
    start_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class MachineFacts:
    id: uuid.UUID
    name: str
    phase: Phase
    started_at: datetime
    alive: bool = True  # the provider still runs its process or container
    online: bool = False  # its agent heartbeats now
    ever_online: bool = False  # it has heartbeated since it started
    busy: int = 0
    idle_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class ScaleSnapshot:
    scale: Scale
    machines: tuple[MachineFacts, ...]
    waiting: int  # released jobs of the type no machine has claimed yet
    now: datetime


@dataclass(frozen=True, slots=True)
class Stop:
    machine_id: uuid.UUID
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now. `start`: new machines; `stop`: stop now; `drain`: take no new
    work, stop when idle; `replace`: forget a crashed machine. `why` explains `start`."""

    start: int = 0
    why: tuple[str, ...] = ()
    stop: tuple[Stop, ...] = ()
    drain: tuple[Stop, ...] = ()
    replace: tuple[Stop, ...] = ()
    rules: tuple[str, ...] = field(default=())  # the rules that changed the plan

    def leaving(self) -> set[uuid.UUID]:
        return {s.machine_id for s in (*self.stop, *self.drain, *self.replace)}

    def staying(self, machines: Sequence[MachineFacts]) -> list[MachineFacts]:
        """Machines that keep serving after this plan: not leaving and not draining."""
        gone = self.leaving()
        return [m for m in machines if m.id not in gone and m.phase is not Phase.draining]


class ScaleRule:
    name: ClassVar[str]

    def apply(self, s: ScaleSnapshot, plan: Plan) -> Plan:
        raise NotImplementedError

    def _changed(self, plan: Plan, **changes: object) -> Plan:
        return replace(plan, rules=(*plan.rules, self.name), **changes)  # type: ignore[arg-type]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class ReplaceCrashed(ScaleRule):
    name = "replace_crashed"

    def apply(self, s: ScaleSnapshot, plan: Plan) -> Plan:
        gone: list[Stop] = []
        timeout = timedelta(seconds=s.scale.start_timeout_s)
        for m in s.machines:
            if m.id in plan.leaving():
                continue
            if not m.alive:
                why = f"Machine '{m.name}' stopped on its own (its process or container ended)."
            elif m.ever_online and not m.online:
                why = f"Machine '{m.name}' stopped heartbeating."
            elif not m.ever_online and s.now - m.started_at > timeout:
                why = (
                    f"Machine '{m.name}' did not heartbeat within "
                    f"{s.scale.start_timeout_s:g} s of its start."
                )
            else:
                continue
            gone.append(Stop(m.id, self.name, why))
        if not gone:
            return plan
        return self._changed(plan, replace=(*plan.replace, *gone))


class ScaleUpForWaitingWork(ScaleRule):
    name = "scale_up_for_waiting_work"

    def apply(self, s: ScaleSnapshot, plan: Plan) -> Plan:
        slots = max(1, s.scale.slots)
        free = plan.start * slots
        for m in plan.staying(s.machines):
            free += slots if m.phase is Phase.starting else max(0, slots - m.busy)
        short = s.waiting - free
        if short <= 0:
            return plan
        more = math.ceil(short / slots)
        why = f"{_plural(s.waiting, 'job')} waiting for a machine"
        return self._changed(plan, start=plan.start + more, why=(*plan.why, why))


class KeepMinimum(ScaleRule):
    name = "keep_minimum"

    def apply(self, s: ScaleSnapshot, plan: Plan) -> Plan:
        have = len(plan.staying(s.machines)) + plan.start
        if have >= s.scale.min_scale:
            return plan
        why = f"min_scale is {s.scale.min_scale}"
        more = s.scale.min_scale - have
        return self._changed(plan, start=plan.start + more, why=(*plan.why, why))


class StopAfterGrace(ScaleRule):
    name = "stop_after_grace"

    def apply(self, s: ScaleSnapshot, plan: Plan) -> Plan:
        if s.waiting > 0 or plan.start > 0:
            return plan  # an idle machine is about to get work
        grace = timedelta(seconds=s.scale.grace_period_s)
        staying = plan.staying(s.machines)
        spare = len(staying) - s.scale.min_scale
        idle = sorted(
            (
                m
                for m in staying
                if m.phase is Phase.ready
                and m.busy == 0
                and m.idle_since is not None
                and s.now - m.idle_since >= grace
            ),
            key=lambda m: (m.idle_since, m.name),
        )
        stops = [
            Stop(
                m.id,
                self.name,
                f"Machine '{m.name}' was idle for {s.scale.grace_period_s:g} s (grace_period).",
            )
            for m in idle[: max(0, spare)]
        ]
        if not stops:
            return plan
        return self._changed(plan, stop=(*plan.stop, *stops))


class CapAtMaximum(ScaleRule):
    name = "cap_at_maximum"

    def apply(self, s: ScaleSnapshot, plan: Plan) -> Plan:
        cap = s.scale.max_scale
        # Starting machines count: they are machines the provider runs.
        staying = plan.staying(s.machines)
        start = min(plan.start, max(0, cap - len(staying)))
        excess = len(staying) - cap
        stops: list[Stop] = []
        if excess > 0:
            # Idle first (longest idle first), then the least busy; newest first on ties.
            order = sorted(
                staying,
                key=lambda m: (m.busy, m.idle_since or s.now, -m.started_at.timestamp()),
            )
            stops = [
                Stop(m.id, self.name, f"More than max_scale ({cap}) machines run.")
                for m in order[:excess]
            ]
        if start == plan.start and not stops:
            return plan
        return self._changed(plan, start=start, stop=(*plan.stop, *stops))


class FinishDraining(ScaleRule):
    name = "finish_draining"

    def apply(self, s: ScaleSnapshot, plan: Plan) -> Plan:
        leaving = plan.leaving()
        done = [
            Stop(m.id, self.name, f"Machine '{m.name}' has drained (no job left).")
            for m in s.machines
            if m.phase is Phase.draining and m.busy == 0 and m.id not in leaving
        ]
        if not done:
            return plan
        return self._changed(plan, stop=(*plan.stop, *done))


class NeverStopBusy(ScaleRule):
    name = "never_stop_busy"

    def apply(self, s: ScaleSnapshot, plan: Plan) -> Plan:
        busy = {m.id: m for m in s.machines if m.busy > 0}
        keep = tuple(x for x in plan.stop if x.machine_id not in busy)
        if len(keep) == len(plan.stop):
            return plan
        drain = tuple(
            Stop(
                x.machine_id,
                x.rule,
                f"{x.reason} It drains first: {_plural(busy[x.machine_id].busy, 'job')} "
                "still running.",
            )
            for x in plan.stop
            if x.machine_id in busy and busy[x.machine_id].phase is not Phase.draining
        )
        return self._changed(plan, stop=keep, drain=(*plan.drain, *drain))


POLICY: Final[tuple[ScaleRule, ...]] = (
    ReplaceCrashed(),
    ScaleUpForWaitingWork(),
    KeepMinimum(),
    StopAfterGrace(),
    CapAtMaximum(),
    FinishDraining(),
    NeverStopBusy(),
)


def decide(snapshot: ScaleSnapshot, rules: Sequence[ScaleRule] = POLICY) -> Plan:
    plan = Plan()
    for rule in rules:
        plan = rule.apply(snapshot, plan)
    return plan
