"""The elastic scaling rules (policies.scaling): each rule alone, with tables, then the
whole policy on the scenarios of docs/elastic.md."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from policies.scaling import (
    POLICY,
    CapAtMaximum,
    FinishDraining,
    KeepMinimum,
    MachineFacts,
    NeverStopBusy,
    Phase,
    Plan,
    ReplaceCrashed,
    Scale,
    ScaleSnapshot,
    ScaleUpForWaitingWork,
    Stop,
    StopAfterGrace,
    decide,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
IDS = {name: uuid.uuid5(uuid.NAMESPACE_URL, name) for name in "abcdefgh"}


def m(
    name: str,
    phase: Phase = Phase.ready,
    *,
    busy: int = 0,
    idle_s: float | None = None,
    age_s: float = 600,
    alive: bool = True,
    online: bool | None = None,
    ever_online: bool | None = None,
) -> MachineFacts:
    """A machine `name`; `idle_s`: idle for that long (None: busy or just seen)."""
    up = phase is not Phase.starting
    return MachineFacts(
        id=IDS[name],
        name=name,
        phase=phase,
        started_at=NOW - timedelta(seconds=age_s),
        alive=alive,
        online=up if online is None else online,
        ever_online=up if ever_online is None else ever_online,
        busy=busy,
        idle_since=None if idle_s is None else NOW - timedelta(seconds=idle_s),
    )


def snap(*machines: MachineFacts, waiting: int = 0, **scale: float) -> ScaleSnapshot:
    settings = {"min_scale": 0, "max_scale": 3, "grace_period_s": 30, "slots": 1, **scale}
    return ScaleSnapshot(Scale(**settings), tuple(machines), waiting, NOW)  # type: ignore[arg-type]


def names(stops: tuple[Stop, ...]) -> list[str]:
    by_id = {v: k for k, v in IDS.items()}
    return sorted(by_id[s.machine_id] for s in stops)


# ---------------------------------------------------------------------- ReplaceCrashed


@pytest.mark.parametrize(
    ("machine", "replaced"),
    [
        (m("a"), False),
        (m("a", alive=False), True),  # process or container gone
        (m("a", online=False), True),  # was online, stopped heartbeating
        (m("a", Phase.starting, age_s=10), False),  # still booting
        (m("a", Phase.starting, age_s=121), True),  # never heartbeated in time
        (m("a", Phase.starting, age_s=121, ever_online=True, online=True), False),
        (m("a", Phase.draining, busy=1, alive=False), True),
    ],
)
def test_replace_crashed(machine: MachineFacts, replaced: bool) -> None:
    plan = ReplaceCrashed().apply(snap(machine), Plan())
    assert names(plan.replace) == (["a"] if replaced else [])
    assert plan.rules == (("replace_crashed",) if replaced else ())


# --------------------------------------------------------------- ScaleUpForWaitingWork


@pytest.mark.parametrize(
    ("machines", "waiting", "slots", "start"),
    [
        ((), 0, 1, 0),
        ((), 1, 1, 1),
        ((), 9, 1, 9),  # the maximum is CapAtMaximum's business
        ((), 9, 4, 3),  # ceil(9 / 4)
        ((m("a"),), 1, 1, 0),  # an idle ready machine takes it
        ((m("a", busy=1),), 1, 1, 1),
        ((m("a", busy=1),), 1, 2, 0),  # a free slot on a busy machine
        ((m("a", Phase.starting, age_s=5),), 1, 1, 0),  # one is on its way
        ((m("a", Phase.starting, age_s=5),), 3, 1, 2),
        ((m("a", Phase.draining),), 1, 1, 1),  # a draining machine takes no work
    ],
)
def test_scale_up_for_waiting_work(
    machines: tuple[MachineFacts, ...], waiting: int, slots: int, start: int
) -> None:
    plan = ScaleUpForWaitingWork().apply(snap(*machines, waiting=waiting, slots=slots), Plan())
    assert plan.start == start
    assert bool(plan.why) == (start > 0)


def test_scale_up_ignores_machines_already_leaving() -> None:
    plan = Plan(replace=(Stop(IDS["a"], "replace_crashed", "gone"),))
    assert ScaleUpForWaitingWork().apply(snap(m("a"), waiting=1), plan).start == 1


# ------------------------------------------------------------------------ KeepMinimum


@pytest.mark.parametrize(
    ("machines", "planned", "minimum", "start"),
    [
        ((), 0, 0, 0),
        ((), 0, 1, 1),
        ((), 1, 1, 1),  # already planned
        ((m("a"),), 0, 1, 0),
        ((m("a", Phase.starting, age_s=1),), 0, 1, 0),
        ((m("a", Phase.draining),), 0, 1, 1),  # draining ones are on their way out
        ((m("a"),), 0, 3, 2),
    ],
)
def test_keep_minimum(
    machines: tuple[MachineFacts, ...], planned: int, minimum: int, start: int
) -> None:
    plan = KeepMinimum().apply(snap(*machines, min_scale=minimum), Plan(start=planned))
    assert plan.start == start


def test_keep_minimum_replaces_a_crashed_one() -> None:
    crashed = Plan(replace=(Stop(IDS["a"], "replace_crashed", "gone"),))
    assert KeepMinimum().apply(snap(m("a"), min_scale=1), crashed).start == 1


# --------------------------------------------------------------------- StopAfterGrace


@pytest.mark.parametrize(
    ("machines", "waiting", "minimum", "stopped"),
    [
        ((m("a", idle_s=29),), 0, 0, []),  # within the grace period
        ((m("a", idle_s=30),), 0, 0, ["a"]),
        ((m("a", idle_s=300),), 1, 0, []),  # work waits: it is about to get it
        ((m("a", idle_s=300),), 0, 1, []),  # the minimum stays
        ((m("a", idle_s=300), m("b", idle_s=100), m("c", idle_s=40)), 0, 1, ["a", "b"]),
        ((m("a", busy=1), m("b", idle_s=40)), 0, 1, ["b"]),
        ((m("a", idle_s=None),), 0, 0, []),  # idle since unknown: not yet
        ((m("a", Phase.starting, idle_s=300),), 0, 0, []),  # never stop one booting
        ((m("a", Phase.draining, idle_s=300),), 0, 0, []),  # FinishDraining's
    ],
)
def test_stop_after_grace(
    machines: tuple[MachineFacts, ...], waiting: int, minimum: int, stopped: list[str]
) -> None:
    plan = StopAfterGrace().apply(snap(*machines, waiting=waiting, min_scale=minimum), Plan())
    assert names(plan.stop) == stopped


def test_stop_after_grace_waits_when_a_start_is_planned() -> None:
    assert StopAfterGrace().apply(snap(m("a", idle_s=300)), Plan(start=1)).stop == ()


# ----------------------------------------------------------------------- CapAtMaximum


@pytest.mark.parametrize(
    ("machines", "planned", "maximum", "start", "stopped"),
    [
        ((), 9, 3, 3, []),
        ((m("a"),), 9, 3, 2, []),
        ((m("a", Phase.starting, age_s=1), m("b")), 5, 3, 1, []),
        ((m("a"), m("b"), m("c")), 1, 3, 0, []),
        ((m("a", Phase.draining), m("b"), m("c")), 1, 3, 1, []),  # draining ones leave
        ((m("a", busy=1), m("b", idle_s=10), m("c", idle_s=50)), 0, 1, 0, ["b", "c"]),
        ((m("a", busy=1), m("b", busy=2)), 0, 0, 0, ["a", "b"]),  # drained by NeverStopBusy
    ],
)
def test_cap_at_maximum(
    machines: tuple[MachineFacts, ...],
    planned: int,
    maximum: int,
    start: int,
    stopped: list[str],
) -> None:
    plan = CapAtMaximum().apply(snap(*machines, max_scale=maximum), Plan(start=planned))
    assert plan.start == start
    assert names(plan.stop) == stopped


# --------------------------------------------------------------------- FinishDraining


@pytest.mark.parametrize(
    ("machine", "stopped"),
    [
        (m("a", Phase.draining, busy=1), False),
        (m("a", Phase.draining), True),
        (m("a", idle_s=999), False),  # ready: not this rule's
    ],
)
def test_finish_draining(machine: MachineFacts, stopped: bool) -> None:
    plan = FinishDraining().apply(snap(machine), Plan())
    assert names(plan.stop) == (["a"] if stopped else [])


# ---------------------------------------------------------------------- NeverStopBusy


@pytest.mark.parametrize(
    ("machine", "stopped", "drained"),
    [
        (m("a"), ["a"], []),
        (m("a", busy=1), [], ["a"]),
        (m("a", Phase.draining, busy=1), [], []),  # already draining: nothing new
    ],
)
def test_never_stop_busy(machine: MachineFacts, stopped: list[str], drained: list[str]) -> None:
    plan = NeverStopBusy().apply(
        snap(machine), Plan(stop=(Stop(IDS["a"], "cap_at_maximum", "over"),))
    )
    assert names(plan.stop) == stopped
    assert names(plan.drain) == drained
    for d in plan.drain:
        assert "drains first" in d.reason and d.rule == "cap_at_maximum"


# ------------------------------------------------------------- the policy as a whole


def test_policy_order_and_names() -> None:
    assert [r.name for r in POLICY] == [
        "replace_crashed",
        "scale_up_for_waiting_work",
        "keep_minimum",
        "stop_after_grace",
        "cap_at_maximum",
        "finish_draining",
        "never_stop_busy",
    ]


@pytest.mark.parametrize(
    ("machines", "waiting", "start", "stopped", "drained", "replaced"),
    [
        # min 1, max 3, grace 30 s: nothing runs yet -> the minimum starts.
        ((), 0, 1, [], [], []),
        # A burst of 9 jobs with one idle machine: two more, never beyond 3.
        ((m("a"),), 9, 2, [], [], []),
        # All busy and more waiting: at the maximum, nothing to start.
        ((m("a", busy=1), m("b", busy=1), m("c", busy=1)), 6, 0, [], [], []),
        # Drained: the two idle past the grace stop, the minimum stays.
        ((m("a", idle_s=31), m("b", idle_s=35), m("c", idle_s=40)), 0, 0, ["b", "c"], [], []),
        # One crashed: replaced by a new one to keep the minimum.
        ((m("a", alive=False),), 0, 1, [], [], ["a"]),
    ],
)
def test_policy_scenarios(
    machines: tuple[MachineFacts, ...],
    waiting: int,
    start: int,
    stopped: list[str],
    drained: list[str],
    replaced: list[str],
) -> None:
    plan = decide(snap(*machines, waiting=waiting, min_scale=1, max_scale=3))
    assert plan.start == start
    assert names(plan.stop) == stopped
    assert names(plan.drain) == drained
    assert names(plan.replace) == replaced


def test_detached_provider_drains_everything() -> None:
    """A detached provider is decided with min 0, max 0: idle ones stop, busy ones drain."""
    plan = decide(snap(m("a", busy=1), m("b", idle_s=1), waiting=3, min_scale=0, max_scale=0))
    assert (plan.start, names(plan.stop), names(plan.drain)) == (0, ["b"], ["a"])
