"""A job's life as one pure table: states, events, allowed transitions, side effects.

The job ledger (`flows.ledger`) is the only writer of job state and asks this table what
an event does to a job in a given state. Nothing here touches a database or the network.

- A *new* job is in the pseudo-state `NEW` until its first event (accept, hold, reject,
  claim, start) creates its row.
- Terminal states never change again: any event on a terminal job is recorded as a note
  (`Verdict.note`), never as a new state. One exception keeps the reason people need:
  a limit kill reported after the engine already ended the run `failed` refines the
  reason of that same `failed` state (the state itself does not move).
- An event a state does not allow is `Verdict.refuse`: the caller learns it and nothing
  changes (the dispatcher read a stale row, a late report from a machine...).

Each allowed transition carries its side effects (`Effect`): the ledger runs them in the
transition's transaction (notifications, credential revocation, usage, slot release) or
right after its commit (`tell_prefect_*`: Prefect is never called under a row lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class JobState(StrEnum):
    new = "new"  # pseudo-state: no row yet
    held = "held"
    scheduled = "scheduled"
    running = "running"
    cancelling = "cancelling"
    completed = "completed"
    failed = "failed"
    crashed = "crashed"
    cancelled = "cancelled"
    rejected = "rejected"


class JobEvent(StrEnum):
    # decisions of the control plane
    accept = "accept"  # admitted now: run may start
    hold = "hold"  # a limit is full: wait in the user's queue
    release = "release"  # a slot freed: the held job may start
    reject = "reject"  # admission said never
    claim = "claim"  # a machine took it (the claim gate said run)
    request_cancel = "request_cancel"  # someone asked to stop a job whose run may be live
    cancel = "cancel"  # the job ends cancelled (nothing left to stop, or Prefect confirmed)
    fail = "fail"  # the control plane ends it failed (deployment gone, Prefect refused)
    limit_kill = "limit_kill"  # its machine stopped it at its runtime or memory limit
    crash = "crash"  # its machine went away with it (offline, agent restarted)
    # what Prefect reports about the run
    observe_pending = "observe_pending"
    observe_running = "observe_running"
    observe_cancelling = "observe_cancelling"
    observe_completed = "observe_completed"
    observe_failed = "observe_failed"
    observe_crashed = "observe_crashed"
    observe_cancelled = "observe_cancelled"
    observe_rejected = "observe_rejected"


class Effect(StrEnum):
    notify_end = "notify_end"  # the org's targets and the owner's e-mail preference
    revoke_credentials = "revoke_credentials"  # the job's tokens stop working
    record_usage = "record_usage"  # compute time of a job that ran, into the metrics
    release_slot = "release_slot"  # its machine has one more free slot
    tell_prefect_hold = "tell_prefect_hold"
    tell_prefect_release = "tell_prefect_release"
    tell_prefect_reject = "tell_prefect_reject"
    tell_prefect_cancel = "tell_prefect_cancel"


class Verdict(StrEnum):
    move = "move"  # the state changes (or a new row is created)
    stay = "stay"  # allowed, same state (reason, machine or timings may be refreshed)
    note = "note"  # the job is terminal: recorded as a note only
    refuse = "refuse"  # not allowed from this state: nothing changes


S, E, X = JobState, JobEvent, Effect

TERMINAL: Final = frozenset({S.completed, S.failed, S.crashed, S.cancelled, S.rejected})
# States holding one of the user's slots (counted against concurrency limits).
ACTIVE: Final = frozenset({S.scheduled, S.running, S.cancelling})
QUEUED: Final = frozenset({S.held})
LIVE: Final = ACTIVE | QUEUED
STATES: Final = tuple(s for s in S if s is not S.new)

_CANCEL_ASKED: Final = "job.cancel_requested"
_END: Final = frozenset({X.notify_end, X.revoke_credentials})
_RAN: Final = frozenset({X.record_usage, X.release_slot})


@dataclass(frozen=True, slots=True)
class Rule:
    """What one (state, event) pair does."""

    verdict: Verdict
    target: JobState
    effects: frozenset[Effect] = frozenset()
    audit_action: str = ""  # the audit row's action; empty for none


def _end(event: JobEvent, target: JobState, *, ran: bool, tell: Effect | None = None) -> Rule:
    effects = set(_END if target is not S.rejected else {X.revoke_credentials})
    if ran:
        effects |= _RAN
    if tell is not None:
        effects.add(tell)
    return Rule(Verdict.move, target, frozenset(effects), f"job.{target.value}")


def _build() -> dict[tuple[JobState, JobEvent], Rule]:
    table: dict[tuple[JobState, JobEvent], Rule] = {}

    def move(src: JobState, ev: JobEvent, dst: JobState, *effects: Effect, audit: str = "") -> None:
        table[(src, ev)] = Rule(Verdict.move, dst, frozenset(effects), audit)

    def stay(src: JobState, ev: JobEvent, *effects: Effect) -> None:
        table[(src, ev)] = Rule(Verdict.stay, src, frozenset(effects))

    # Creation: a submission, a schedule's fire, a run adopted by the dispatcher or at claim.
    move(S.new, E.accept, S.scheduled, audit="job.submitted")
    move(S.new, E.hold, S.held, audit="job.submitted")
    move(S.new, E.reject, S.rejected, audit="job.rejected")
    move(S.new, E.claim, S.running, audit="job.adopted")
    move(S.new, E.observe_running, S.running, audit="job.adopted")

    # Waiting and starting.
    stay(S.held, E.hold)  # still full: a fresher reason
    move(S.held, E.release, S.scheduled, X.tell_prefect_release, audit="job.released")
    move(S.held, E.claim, S.running, audit="job.claimed")  # released in Prefect first
    # A worker took a run that was released by hand in Prefect: it holds a slot now.
    move(S.held, E.observe_pending, S.scheduled, audit="job.released")
    stay(S.scheduled, E.observe_pending)
    stay(S.running, E.observe_pending)
    move(S.scheduled, E.hold, S.held, X.tell_prefect_hold, audit="job.held")
    stay(S.scheduled, E.accept)
    move(S.scheduled, E.claim, S.running, audit="job.claimed")
    stay(S.running, E.claim)  # the same machine asking again
    for src in (S.held, S.scheduled):
        move(src, E.observe_running, S.running, audit="job.running")
    stay(S.running, E.observe_running)
    stay(S.cancelling, E.observe_running)
    stay(S.cancelling, E.observe_cancelling)

    # Refusals.
    for src in (S.held, S.scheduled):
        table[(src, E.reject)] = _end(E.reject, S.rejected, ran=False, tell=X.tell_prefect_reject)
    for src in (S.held, S.scheduled, S.running, S.cancelling):
        ran = src in (S.running, S.cancelling)
        table[(src, E.observe_rejected)] = _end(E.observe_rejected, S.rejected, ran=ran)

    # Cancelling: held (nothing runs) ends at once; a live run is asked to stop first.
    for src in (S.scheduled, S.running):
        move(
            src, E.request_cancel, S.cancelling, X.tell_prefect_cancel, audit="job.cancel_requested"
        )
    # Nothing runs yet: asking to stop a held job ends it.
    table[(S.held, E.request_cancel)] = _end(
        E.request_cancel, S.cancelled, ran=False, tell=X.tell_prefect_cancel
    )
    move(S.held, E.observe_cancelling, S.cancelling, audit=_CANCEL_ASKED)
    for src in (S.scheduled, S.running):
        move(src, E.observe_cancelling, S.cancelling, audit=_CANCEL_ASKED)
    stay(S.cancelling, E.request_cancel, X.tell_prefect_cancel)
    for src in (S.held, S.scheduled, S.running, S.cancelling):
        ran = src in (S.running, S.cancelling)
        table[(src, E.cancel)] = _end(E.cancel, S.cancelled, ran=ran, tell=X.tell_prefect_cancel)
        table[(src, E.observe_cancelled)] = _end(E.observe_cancelled, S.cancelled, ran=ran)
        table[(src, E.fail)] = _end(E.fail, S.failed, ran=ran, tell=X.tell_prefect_cancel)
        table[(src, E.crash)] = _end(E.crash, S.crashed, ran=ran)
        table[(src, E.observe_completed)] = _end(E.observe_completed, S.completed, ran=ran)
        table[(src, E.observe_failed)] = _end(E.observe_failed, S.failed, ran=ran)
        table[(src, E.observe_crashed)] = _end(E.observe_crashed, S.crashed, ran=ran)
    for src in (S.running, S.cancelling):
        table[(src, E.limit_kill)] = _end(E.limit_kill, S.failed, ran=True)
    # The engine's own `Failed: MemoryError` got there first: same end, the limit's reason.
    table[(S.failed, E.limit_kill)] = Rule(Verdict.stay, S.failed, frozenset(), "job.limit_reason")

    # Everything else: terminal -> note; otherwise refused.
    for src in S:
        for ev in E:
            if (src, ev) in table:
                continue
            if src in TERMINAL:
                table[(src, ev)] = Rule(Verdict.note, src)
            else:
                table[(src, ev)] = Rule(Verdict.refuse, src)
    return table


TABLE: Final[dict[tuple[JobState, JobEvent], Rule]] = _build()


def rule_for(state: JobState | str, event: JobEvent) -> Rule:
    """What `event` does to a job in `state` (every pair is in the table)."""
    return TABLE[(JobState(state), event)]


# What Prefect's final state types mean for a job (`observe_*` events).
PREFECT_END_EVENTS: Final = {
    "COMPLETED": E.observe_completed,
    "FAILED": E.observe_failed,
    "CRASHED": E.observe_crashed,
    "CANCELLED": E.observe_cancelled,
}


def mermaid() -> str:
    """The state diagram (docs/lifecycle.md is generated from this)."""
    lines = ["stateDiagram-v2"]
    edges: dict[tuple[str, str], list[str]] = {}
    for (src, ev), rule in TABLE.items():
        if rule.verdict is Verdict.move:
            start = "[*]" if src is S.new else src.value  # a new job has no state yet
            edges.setdefault((start, rule.target.value), []).append(ev.value)
    for (first, last), events in sorted(edges.items()):
        lines.append(f"    {first} --> {last}: {', '.join(sorted(events))}")
    for state in sorted(TERMINAL):
        lines.append(f"    {state.value} --> [*]")
    return "\n".join(lines)
