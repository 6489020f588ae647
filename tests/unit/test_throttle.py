"""Sign-in throttle arithmetic and who counts as one client (pure)."""

from __future__ import annotations

from ipaddress import ip_network

from api.client_address import client_address
from policies.throttle import (
    ThrottlePolicy,
    ThrottleState,
    address_key,
    after_failure,
    delay_after,
    retry_after,
    wait_s,
)

POLICY = ThrottlePolicy(free_failures=2, base_delay_s=1.0, max_delay_s=8.0, forget_after_s=100.0)


def test_waits_double_after_the_free_failures_and_stop_at_the_cap() -> None:
    assert [delay_after(n, POLICY) for n in range(1, 8)] == [0, 0, 1, 2, 4, 8, 8]
    assert delay_after(10**12, POLICY) == 8  # no overflow however many


def test_a_failure_counts_from_now_and_old_ones_are_forgotten() -> None:
    state = ThrottleState()
    for t in (0.0, 1.0, 2.0):
        state = after_failure(state, t, POLICY)
    assert state == ThrottleState(failures=3, blocked_until=3.0, last_failure_at=2.0)
    assert wait_s(state, 2.5) == 0.5 and wait_s(state, 3.0) == 0
    assert after_failure(state, 102.0, POLICY).failures == 1  # 100 s quiet: forgotten
    assert retry_after(0.01) == 1 and retry_after(2.0) == 2 and retry_after(2.2) == 3


def test_one_client_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert address_key("198.51.100.7") == "198.51.100.7"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert address_key("testclient") == "testclient"


def test_forwarded_for_is_read_from_the_right_behind_trusted_proxies() -> None:
    proxies = [ip_network("10.0.0.0/8")]
    # The client wrote the left part itself; the proxies appended from the right.
    assert client_address("10.0.0.1", ["6.6.6.6, 198.51.100.7, 10.0.0.2"], proxies) == (
        "198.51.100.7"
    )
    assert client_address("10.0.0.1", ["6.6.6.6", "198.51.100.7"], proxies) == "198.51.100.7"
    assert client_address("10.0.0.1", [], proxies) == "10.0.0.1"
    assert client_address("10.0.0.1", ["10.0.0.9, 10.0.0.2"], proxies) == "10.0.0.9"
    # An untrusted peer's header is ignored.
    assert client_address("203.0.113.9", ["198.51.100.7"], proxies) == "203.0.113.9"
    assert client_address("203.0.113.9", ["198.51.100.7"], []) == "203.0.113.9"
    assert client_address(None, [], proxies) == "unknown"
