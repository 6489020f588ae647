"""When the supervisor restarts a crashed child: exponential backoff, reset after a stable
run, and crash-loop detection (see api.cli.up)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

# 2**32 s is far beyond any cap: keeps the float arithmetic finite for absurd attempts.
_MAX_EXPONENT: Final = 32


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    # An exit after this long up starts the backoff over: the crash is a new incident.
    stable_after_s: float = 60.0
    # This many exits within the window is a crash loop: reported loudly, still retried.
    crash_loop_exits: int = 5
    crash_loop_window_s: float = 120.0

    def delay(self, attempt: int) -> float:
        """The wait before restart `attempt` (1 = first since the child was last stable):
        first_delay_s doubling each time, capped at max_delay_s."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))


class Backoff:
    """One child's restart bookkeeping. Times are monotonic seconds, passed in (so a test
    drives the clock)."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self._exits: deque[float] = deque()

    def on_exit(self, *, up_for_s: float, now: float) -> float:
        """Record an exit after `up_for_s` seconds of running; the delay before the restart."""
        if up_for_s >= self.policy.stable_after_s:
            self.attempt = 0
        self.attempt += 1
        self._exits.append(now)
        while self._exits and now - self._exits[0] > self.policy.crash_loop_window_s:
            self._exits.popleft()
        return self.policy.delay(self.attempt)

    def recent_exits(self, now: float) -> int:
        """Exits within the crash-loop window before `now`."""
        return sum(1 for t in self._exits if now - t <= self.policy.crash_loop_window_s)

    def crash_looping(self, now: float) -> bool:
        return self.recent_exits(now) >= self.policy.crash_loop_exits
