"""The base of every background loop of an API process: one thread, an interval,
backoff with jitter on errors, and a health snapshot for the operations endpoint.

A subclass names itself, says how often it runs and implements `run_once()`. The loop
survives any exception of a pass (it is logged, counted, and the next pass waits longer:
the interval doubled per consecutive failure, capped); `should_run()` lets a replica
stand by (the dispatcher's lease); `wake()` cuts the wait short (new work arrived, or
the pass left more to do). Nothing here starts by itself: start-up code lists the
services it runs (flows.wiring) and stops them on shutdown.

It lives in orgs/, the lowest layer with runtime code, so a loop at any layer (the
notification deliveries here, the dispatcher and housekeeping in flows.dispatch) can
subclass it without importing upwards.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from orgs.db import utcnow

log = logging.getLogger(__name__)

BACKOFF_MAX_S: Final = 60.0
MIN_INTERVAL_S: Final = 0.01
_ERROR_CHARS: Final = 200
# user:password@ in a URL a driver error may quote (the database URL, a store endpoint).
_CREDENTIALS: Final = re.compile(r"(?<=//)[^/@\s]+@")


@dataclass(frozen=True)
class ServiceHealth:
    """What `/healthz` reports for one service."""

    name: str
    enabled: bool
    running: bool
    interval_s: float
    last_success_at: datetime | None
    last_error_at: datetime | None
    last_error: str | None
    consecutive_failures: int


def backoff_delay(
    interval_s: float,
    failures: int,
    cap_s: float = BACKOFF_MAX_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait before the next pass after `failures` consecutive failed ones.

    No failure: the interval. Otherwise the interval doubled per failure, capped at
    `cap_s` (never below the interval), then jittered down by at most half (never below
    the interval), so replicas hit by the same outage do not retry in step.
    """
    if failures <= 0:
        return interval_s
    cap = max(cap_s, interval_s)
    ceiling = min(cap, interval_s * 2.0 ** min(failures, 32))
    floor = max(interval_s, ceiling / 2)
    return floor + (ceiling - floor) * rand()


def describe_error(exc: BaseException) -> str:
    """A short, credential-free line for the health report (the log has the traceback).

    First line only: SQLAlchemy puts the statement and its parameters on later lines.
    """
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = _CREDENTIALS.sub("***@", text)
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"


class Service(ABC):
    """One background loop (see the module docstring). Thread-safe start/stop/health."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        *,
        enabled: bool = True,
        initial_delay_s: float = 0.0,
        backoff_max_s: float = BACKOFF_MAX_S,
        stop_timeout_s: float = 10.0,
        wakeup: threading.Event | None = None,
    ) -> None:
        self.name = name
        # A zero interval would spin a core; disabled services keep theirs for the report.
        self.interval_s = max(MIN_INTERVAL_S, interval_s) if enabled else interval_s
        self.enabled = enabled
        self.initial_delay_s = initial_delay_s
        self.backoff_max_s = backoff_max_s
        self.stop_timeout_s = stop_timeout_s
        # Set by stop() and wake(); may be shared with code that signals new work.
        self._wakeup = wakeup or threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_success_at: datetime | None = None
        self._last_error_at: datetime | None = None
        self._last_error: str | None = None
        self._failures = 0

    # -- what a subclass provides ----------------------------------------------------

    @abstractmethod
    def run_once(self) -> object:
        """One pass of bounded work. Raising marks the pass failed (the loop goes on)."""

    def should_run(self) -> bool:
        """Whether this process works this pass (False: stand by, e.g. no lease)."""
        return True

    def on_start(self) -> None:
        """Called in start(), before the thread starts (open pools and the like)."""
        return None

    def on_stopped(self) -> None:
        """Called in stop(), after the thread ended (release what the loop held)."""
        return None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; a no-op when disabled or already running."""
        with self._lock:
            if not self.enabled or self._thread is not None:
                return
            self._stopping.clear()
            self.on_start()
            self._thread = threading.Thread(target=self._loop, name=f"cshare-{self.name}")
            self._thread.daemon = True
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end, wait for the pass in progress (at most `timeout`)."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stopping.set()
        self._wakeup.set()
        if thread is None:
            return
        thread.join(self.stop_timeout_s if timeout is None else timeout)
        if thread.is_alive():
            log.warning("service %s did not stop in time; leaving its daemon thread", self.name)
        try:
            self.on_stopped()
        except Exception:  # shutting down: report and carry on stopping the others
            log.warning("service %s: clean-up after stop failed", self.name, exc_info=True)

    def wake(self) -> None:
        """Run the next pass now instead of after the interval."""
        self._wakeup.set()

    def health(self) -> ServiceHealth:
        with self._lock:
            thread = self._thread
            return ServiceHealth(
                name=self.name,
                enabled=self.enabled,
                running=thread is not None and thread.is_alive() and not self._stopping.is_set(),
                interval_s=self.interval_s,
                last_success_at=self._last_success_at,
                last_error_at=self._last_error_at,
                last_error=self._last_error,
                consecutive_failures=self._failures,
            )

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        if self.initial_delay_s > 0 and self._stopping.wait(self.initial_delay_s):
            return
        while not self._stopping.is_set():
            # Cleared before the pass: a wake() during it makes the wait below return.
            self._wakeup.clear()
            self._pass()
            if self._stopping.is_set():
                return
            self._wakeup.wait(backoff_delay(self.interval_s, self._failures, self.backoff_max_s))

    def _pass(self) -> None:
        try:
            if self.should_run():
                self.run_once()
        except Exception as exc:  # one bad pass must not end the loop
            log.exception("service %s: pass failed", self.name)
            with self._lock:
                self._failures += 1
                self._last_error_at = utcnow()
                self._last_error = describe_error(exc)
            return
        with self._lock:
            self._failures = 0
            self._last_success_at = utcnow()
