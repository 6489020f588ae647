"""The job lifecycle table, every (state, event) pair, written out by hand.

Cells: a target state (the job moves there), `=` (allowed, same state), `n` (terminal:
recorded as a note), `-` (refused: nothing changes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.job_states import (
    TABLE,
    TERMINAL,
    Effect,
    JobEvent,
    JobState,
    Verdict,
    mermaid,
    rule_for,
)

# Columns, in order: accept hold release reject claim request_cancel cancel fail
# limit_kill crash | observe_ pending running cancelling completed failed crashed
# cancelled rejected.
COLUMNS = [
    *("accept", "hold", "release", "reject", "claim", "request_cancel"),
    *("cancel", "fail", "limit_kill", "crash"),
    *("observe_pending", "observe_running", "observe_cancelling", "observe_completed"),
    *("observe_failed", "observe_crashed", "observe_cancelled", "observe_rejected"),
]
# Targets: HE held, SC scheduled, RU running, CG cancelling, CO completed, FA failed,
# CR crashed, CA cancelled, RE rejected.
ABBREV = {
    "HE": "held",
    "SC": "scheduled",
    "RU": "running",
    "CG": "cancelling",
    "CO": "completed",
    "FA": "failed",
    "CR": "crashed",
    "CA": "cancelled",
    "RE": "rejected",
}
# fmt: off
EXPECTED = """
new        SC HE -  RE RU -  -  -  -  -  -  RU -  -  -  -  -  -
held       -  =  SC RE RU CA CA FA -  CR SC RU CG CO FA CR CA RE
scheduled  =  HE -  RE RU CG CA FA -  CR =  RU CG CO FA CR CA RE
running    -  -  -  -  =  CG CA FA FA CR =  =  CG CO FA CR CA RE
cancelling -  -  -  -  -  =  CA FA FA CR -  =  =  CO FA CR CA RE
completed  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n
failed     n  n  n  n  n  n  n  n  =  n  n  n  n  n  n  n  n  n
crashed    n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n
cancelled  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n
rejected   n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n
"""
# fmt: on


def _cells() -> list[tuple[JobState, JobEvent, str]]:
    out = []
    for line in EXPECTED.strip().splitlines():
        state, *cells = line.split()
        assert len(cells) == len(COLUMNS), state
        out += [(JobState(state), JobEvent(ev), c) for ev, c in zip(COLUMNS, cells, strict=True)]
    return out


def test_the_expectation_names_every_pair() -> None:
    assert set(COLUMNS) == {e.value for e in JobEvent}
    assert (
        {(s, e) for s, e, _ in _cells()}
        == set(TABLE)
        == {(s, e) for s in JobState for e in JobEvent}
    )


@pytest.mark.parametrize(("state", "event", "cell"), _cells(), ids=lambda v: str(v))
def test_each_pair(state: JobState, event: JobEvent, cell: str) -> None:
    rule = rule_for(state, event)
    if cell == "-":
        assert (rule.verdict, rule.target) == (Verdict.refuse, state)
    elif cell == "n":
        assert (rule.verdict, rule.target) == (Verdict.note, state)
    elif cell == "=":
        assert (rule.verdict, rule.target) == (Verdict.stay, state)
    else:
        assert (rule.verdict, rule.target) == (Verdict.move, JobState(ABBREV[cell]))


def test_terminal_states_never_move_again() -> None:
    for (state, _event), rule in TABLE.items():
        if state in TERMINAL:
            assert rule.target is state and rule.verdict is not Verdict.move
            assert not rule.effects


@pytest.mark.parametrize("state", sorted(TERMINAL - {JobState.rejected}))
def test_every_end_notifies_and_revokes_exactly_on_the_move(state: JobState) -> None:
    moves = [r for r in TABLE.values() if r.verdict is Verdict.move and r.target is state]
    assert moves
    for rule in moves:
        assert {Effect.notify_end, Effect.revoke_credentials} <= rule.effects
        assert rule.audit_action == f"job.{state.value}"


def test_a_rejection_revokes_but_does_not_notify() -> None:
    # (a job born rejected never had credentials)
    for (state, _event), rule in TABLE.items():
        if state is JobState.new:
            assert not rule.effects
        elif rule.verdict is Verdict.move and rule.target is JobState.rejected:
            assert Effect.revoke_credentials in rule.effects
            assert Effect.notify_end not in rule.effects


def test_usage_and_slots_only_for_jobs_that_ran() -> None:
    for (state, _event), rule in TABLE.items():
        ran = {Effect.record_usage, Effect.release_slot} & rule.effects
        if ran:
            assert state in (JobState.running, JobState.cancelling)
        elif rule.verdict is Verdict.move and rule.target in TERMINAL:
            assert state in (JobState.new, JobState.held, JobState.scheduled)


@pytest.mark.parametrize(
    ("state", "event", "tell"),
    [
        (JobState.held, JobEvent.release, Effect.tell_prefect_release),
        (JobState.scheduled, JobEvent.hold, Effect.tell_prefect_hold),
        (JobState.held, JobEvent.reject, Effect.tell_prefect_reject),
        (JobState.running, JobEvent.request_cancel, Effect.tell_prefect_cancel),
        (JobState.cancelling, JobEvent.request_cancel, Effect.tell_prefect_cancel),
    ],
)
def test_decisions_tell_prefect(state: JobState, event: JobEvent, tell: Effect) -> None:
    assert tell in rule_for(state, event).effects


def test_what_prefect_reports_is_never_told_back() -> None:
    tells = {e for e in Effect if e.value.startswith("tell_prefect")}
    for (_state, event), rule in TABLE.items():
        if event.value.startswith("observe_"):
            assert not (tells & rule.effects)


def test_mermaid_diagram_names_every_move() -> None:
    text = mermaid()
    assert text.startswith("stateDiagram-v2")
    for (state, _event), rule in TABLE.items():
        if rule.verdict is Verdict.move:
            start = "[*]" if state is JobState.new else state.value
            assert f"{start} --> {rule.target.value}:" in text


def test_docs_show_the_current_diagram() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md").read_text()
    block = doc.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.strip() == mermaid(), (
        "docs/lifecycle.md is stale: regenerate its diagram with "
        "`python -c 'from policies.job_states import mermaid; print(mermaid())'`"
    )
