"""The shared SSRF address rules (orgs.netguard): pure, no network but literal IPs."""

from __future__ import annotations

import ipaddress

import pytest

from orgs.netguard import Allowlist, check_url, forbidden
from policies.errors import Invalid


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104  (an address under test, not a bind)
        "::",
        "224.0.0.1",
        "240.0.0.1",
    ],
)
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert forbidden(ipaddress.ip_address(address))


def test_public_addresses_pass_and_loopback_only_when_allowed() -> None:
    assert not forbidden(ipaddress.ip_address("8.8.8.8"))
    assert not forbidden(ipaddress.ip_address("2606:4700:4700::1111"))
    assert not forbidden(ipaddress.ip_address("127.0.0.1"), allow_loopback=True)
    assert forbidden(ipaddress.ip_address("169.254.169.254"), allow_loopback=True)


def test_allowlist_hosts_and_networks() -> None:
    allow = Allowlist.parse(" *.example.com, minio.internal ,10.0.0.0/8,127.0.0.1/32,")
    assert allow.allows_host("s3.example.com") and allow.allows_host("a.b.EXAMPLE.com.")
    assert not allow.allows_host("example.com") and not allow.allows_host("evil-example.com")
    assert allow.allows_host("minio.internal") and not allow.allows_host("minio.internal.evil")
    assert allow.allows_address(ipaddress.ip_address("10.9.8.7"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not allow.allows_address(ipaddress.ip_address("127.0.0.2"))
    assert Allowlist.parse("") == Allowlist()
    for bad in ("a b", "http://x", "*.*", "x/33/1"):
        with pytest.raises(ValueError):
            Allowlist.parse(bad)


def test_check_url_refuses_internal_literals() -> None:
    with pytest.raises(Invalid) as caught:
        check_url("http://169.254.169.254/latest", field="url", purpose="webhooks")
    assert caught.value.field == "url" and "webhooks may only go" in caught.value.detail
    with pytest.raises(Invalid):
        check_url("http://user:pw@8.8.8.8/", field="url")
    assert check_url("https://8.8.8.8:8443/x", field="url").port == 8443
