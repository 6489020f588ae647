"""Sign-in throttle arithmetic: growing waits after failed logins, never a lockout.

Pure functions over a small state (failures so far, when the current wait ends, when
the last failure was); `orgs.login_throttle` stores that state, one row per account and
per client address. After `free_failures` failures each further failure makes the next
attempt wait `base_delay_s`, then twice that, and so on, capped at `max_delay_s`. An
attempt during a wait is refused without being counted, so a wait never grows while it
runs: whoever presents the right password once it has passed gets in, so the owner is
never kept out longer than the current delay (at most `max_delay_s`).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    free_failures: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    # Failures are forgotten after this long without a new one.
    forget_after_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class ThrottleState:
    failures: int = 0
    blocked_until: float = 0.0  # epoch seconds; no wait once it has passed
    last_failure_at: float = 0.0


def delay_after(failures: int, policy: ThrottlePolicy) -> float:
    """The wait imposed once `failures` failures have been counted (0 while free)."""
    extra = failures - policy.free_failures
    if extra <= 0:
        return 0.0
    # The exponent is bounded so that huge counts cannot overflow the float.
    return min(policy.max_delay_s, policy.base_delay_s * 2.0 ** min(extra - 1, 64))


def schedule(policy: ThrottlePolicy, attempts: int) -> list[float]:
    """The wait after each of the first `attempts` consecutive failures."""
    return [delay_after(n, policy) for n in range(1, attempts + 1)]


def wait_s(state: ThrottleState, now: float) -> float:
    """Seconds until an attempt may be made (0: now)."""
    return max(0.0, state.blocked_until - now)


def after_failure(state: ThrottleState, now: float, policy: ThrottlePolicy) -> ThrottleState:
    """The state once one more failure is counted at `now` (old failures may be forgotten)."""
    recent = now - state.last_failure_at < policy.forget_after_s
    failures = (state.failures if recent else 0) + 1
    return ThrottleState(failures, now + delay_after(failures, policy), now)


def retry_after(wait: float) -> int:
    """The `Retry-After` value for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


def address_key(address: str) -> str:
    """What counts as one client: the IPv4 address, or the IPv6 /64 (what one host gets)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]  # not an address (e.g. a test client's name): as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
