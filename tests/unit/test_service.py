"""The background service base (orgs.service): interval, stop, backoff, health, wake."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orgs.service import (
    BACKOFF_MAX_S,
    Service,
    ServiceHealth,
    backoff_delay,
    describe_error,
)


class Probe(Service):
    """A service that records when each pass ran and fails while told to."""

    def __init__(self, interval_s: float = 0.05, *, fail: int = 0, **kw: Any) -> None:
        super().__init__("probe", interval_s, **kw)
        self.passes: list[float] = []
        self.fail = fail
        self.standby = False
        self.stopped_calls = 0
        self.started_calls = 0
        self.ran = threading.Event()

    def should_run(self) -> bool:
        return not self.standby

    def run_once(self) -> None:
        self.passes.append(time.monotonic())
        self.ran.set()
        if len(self.passes) <= self.fail:
            raise RuntimeError(f"pass {len(self.passes)} broke")

    def on_start(self) -> None:
        self.started_calls += 1

    def on_stopped(self) -> None:
        self.stopped_calls += 1


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Services a test starts; always stopped, and their threads must be gone."""
    started: list[Service] = []
    yield started
    for s in started:
        s.stop(2.0)
    assert not [t for t in threading.enumerate() if t.name == "cshare-probe"]


def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ------------------------------------------------------------------------ backoff (pure)


def test_no_failure_waits_the_interval() -> None:
    assert backoff_delay(2.0, 0, rand=lambda: 1.0) == 2.0
    assert backoff_delay(2.0, 0, rand=lambda: 0.0) == 2.0


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    ceilings = [backoff_delay(1.0, n, cap_s=20.0, rand=lambda: 1.0) for n in range(1, 8)]
    assert ceilings == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    # Huge failure counts neither overflow nor pass the cap.
    assert backoff_delay(1.0, 10_000, cap_s=20.0, rand=lambda: 1.0) == 20.0
    assert backoff_delay(1.0, 3) <= BACKOFF_MAX_S


def test_jitter_stays_between_half_the_ceiling_and_the_ceiling_never_below_interval() -> None:
    assert backoff_delay(1.0, 1, rand=lambda: 0.0) == 1.0  # floor: the interval itself
    assert backoff_delay(1.0, 4, cap_s=20.0, rand=lambda: 0.0) == 8.0  # half of 16
    assert backoff_delay(1.0, 9, cap_s=20.0, rand=lambda: 0.0) == 10.0  # half the cap
    for n in range(1, 12):
        d = backoff_delay(1.0, n, cap_s=20.0)
        assert 1.0 <= d <= 20.0


def test_a_cap_below_the_interval_never_shortens_the_wait() -> None:
    assert backoff_delay(3600.0, 5, cap_s=60.0, rand=lambda: 0.0) == 3600.0


# ------------------------------------------------------------------------- the loop


def test_passes_run_on_the_interval(services: list[Service]) -> None:
    probe = Probe(0.05)
    services.append(probe)
    probe.start()
    wait_until(lambda: len(probe.passes) >= 5)
    gaps = [b - a for a, b in zip(probe.passes, probe.passes[1:], strict=False)]
    assert min(gaps) >= 0.045  # never sooner than the interval
    assert len(probe.passes) <= 5 + 3  # and not spinning


def test_stop_is_prompt_even_with_a_long_interval(services: list[Service]) -> None:
    probe = Probe(3600.0)
    services.append(probe)
    probe.start()
    assert probe.ran.wait(5)
    started = time.monotonic()
    probe.stop()
    assert time.monotonic() - started < 1.0
    assert not probe.health().running
    assert not [t for t in threading.enumerate() if t.name == "cshare-probe"]
    assert probe.stopped_calls == 1


def test_initial_delay_is_cut_short_by_stop(services: list[Service]) -> None:
    probe = Probe(3600.0, initial_delay_s=3600.0)
    services.append(probe)
    probe.start()
    assert probe.health().running
    started = time.monotonic()
    probe.stop()
    assert time.monotonic() - started < 1.0
    assert probe.passes == []


def test_an_exception_does_not_end_the_loop_and_backoff_grows(services: list[Service]) -> None:
    probe = Probe(0.02, fail=4, backoff_max_s=0.2)
    services.append(probe)
    probe.start()
    wait_until(lambda: len(probe.passes) >= 6)
    gaps = [b - a for a, b in zip(probe.passes, probe.passes[1:], strict=False)]
    # After 3 and 4 failures the wait is at least half the ceiling (0.16 and 0.2 ceilings).
    assert gaps[2] >= 0.075 and gaps[3] >= 0.095
    # Back to the interval after a success (the 5th pass succeeded).
    wait_until(lambda: len(probe.passes) >= 8)
    assert probe.passes[7] - probe.passes[6] < 0.15
    h = probe.health()
    assert h.consecutive_failures == 0 and h.running
    assert h.last_error == "RuntimeError: pass 4 broke"  # kept for the operator


def test_health_fields_through_a_life(services: list[Service]) -> None:
    probe = Probe(3600.0, fail=1)
    services.append(probe)
    fresh = probe.health()
    assert fresh == ServiceHealth(
        name="probe",
        enabled=True,
        running=False,
        interval_s=3600.0,
        last_success_at=None,
        last_error_at=None,
        last_error=None,
        consecutive_failures=0,
    )
    probe.start()
    wait_until(lambda: probe.health().consecutive_failures == 1)
    failed = probe.health()
    assert failed.running and failed.last_success_at is None
    assert failed.last_error == "RuntimeError: pass 1 broke"
    assert failed.last_error_at is not None and failed.last_error_at.tzinfo is not None
    probe.wake()
    wait_until(lambda: probe.health().last_success_at is not None)
    ok = probe.health()
    assert ok.consecutive_failures == 0 and ok.last_success_at is not None
    assert ok.last_success_at >= failed.last_error_at
    with pytest.raises(AttributeError):
        ok.running = False  # type: ignore[misc]  # frozen


def test_wake_runs_the_next_pass_now(services: list[Service]) -> None:
    probe = Probe(3600.0)
    services.append(probe)
    probe.start()
    assert probe.ran.wait(5)
    probe.ran.clear()
    probe.wake()
    assert probe.ran.wait(1.0)
    assert len(probe.passes) == 2


def test_standby_skips_the_work_but_keeps_looping(services: list[Service]) -> None:
    probe = Probe(0.02)
    probe.standby = True
    services.append(probe)
    probe.start()
    wait_until(lambda: probe.health().last_success_at is not None)
    assert probe.passes == []
    probe.standby = False
    wait_until(lambda: len(probe.passes) >= 1)


def test_start_is_idempotent_and_disabled_never_starts(services: list[Service]) -> None:
    probe = Probe(3600.0)
    services.append(probe)
    probe.start()
    probe.start()
    assert probe.ran.wait(5)
    assert [t.name for t in threading.enumerate()].count("cshare-probe") == 1
    assert probe.started_calls == 1 and len(probe.passes) == 1
    probe.stop()
    probe.stop()  # a second stop is a no-op
    assert probe.stopped_calls == 1

    off = Probe(0.0, enabled=False)
    services.append(off)
    off.start()
    h = off.health()
    assert not h.enabled and not h.running and off.started_calls == 0
    off.stop()
    assert off.stopped_calls == 0


def test_restart_after_stop(services: list[Service]) -> None:
    probe = Probe(3600.0)
    services.append(probe)
    probe.start()
    assert probe.ran.wait(5)
    probe.stop()
    probe.ran.clear()
    probe.start()
    assert probe.ran.wait(5) and probe.health().running


def test_a_zero_interval_does_not_spin() -> None:
    assert Probe(0.0).interval_s > 0


# ------------------------------------------------------------------ error messages


def test_error_messages_are_one_short_line_without_credentials() -> None:
    exc = RuntimeError(
        "connection to postgresql://cshare:s3cret@db:5432/cshare failed\n"
        "[SQL: SELECT token_hash FROM tokens]\n[parameters: ('abc',)]"
    )
    text = describe_error(exc)
    assert text == "RuntimeError: connection to postgresql://***@db:5432/cshare failed"
    assert "s3cret" not in text and "parameters" not in text
    assert describe_error(ValueError()) == "ValueError"
    assert len(describe_error(ValueError("x" * 1000))) == 200
