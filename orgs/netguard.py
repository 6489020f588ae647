"""Which addresses the server may connect to on a tenant's behalf (the SSRF guard).

Shared by webhook deliveries (`orgs.notifications`) and organizations' own S3 endpoints
(`datasets.endpoints`). Tenants name hosts; the server resolves them and must never be
steered to its own loopback, the cloud metadata service (169.254.169.254), or private
networks behind it. The check is made on the resolved addresses, and callers connect to
an address that was checked (never resolve twice: DNS rebinding).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from policies.errors import Invalid

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$|^\*$")


def unmapped(address: Address) -> Address:
    """`::ffff:169.254.169.254` is still the metadata host: look at the IPv4 inside."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forbidden(address: Address, *, allow_loopback: bool = False) -> bool:
    """True for addresses a tenant may not make the server connect to."""
    address = unmapped(address)
    if address.is_loopback:
        return not allow_loopback
    # `is_global` is False for private, link-local (169.254/16, fe80::/10, so the cloud
    # metadata hosts 169.254.169.254 and fd00:ec2::254 in fc00::/7), shared (100.64/10),
    # reserved, unspecified and documentation ranges.
    return not address.is_global or address.is_multicast


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to now (an IP literal is itself); [] if none."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    found: list[Address] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        address = ipaddress.ip_address(text)
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class Allowlist:
    """What an operator allows beyond public addresses: host name patterns
    (`minio.internal`, `*.example.com`) and networks (`10.0.0.0/8`, `127.0.0.1/32`)."""

    hosts: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """A comma-separated list; ValueError names a bad entry."""
        hosts: list[str] = []
        networks: list[Network] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_PATTERN.fullmatch(entry):
                raise ValueError(
                    f"{entry[:100]!r} is neither a host pattern (like *.example.com) nor a "
                    "network (like 10.0.0.0/8)"
                )
            hosts.append(entry)
        return cls(tuple(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.hosts)

    def allows_address(self, address: Address) -> bool:
        address = unmapped(address)
        return any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    url: str
    scheme: str
    host: str
    port: int
    address: Address  # the vetted address the connection must go to


def check_url(
    url: str,
    *,
    field: str,
    allow_loopback: bool = False,
    max_length: int = 2048,
    purpose: str = "connections",
) -> CheckedUrl:
    """The URL, checked: http(s), a host, no user info, and only public addresses (plus
    loopback with `allow_loopback`). `Invalid(field)` says what is wrong; `purpose` ends
    the sentence about internal addresses ("webhooks may only go to public addresses")."""
    if len(url) > max_length:
        raise Invalid(f"The URL may be at most {max_length} characters.", field=field)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise Invalid("Not a valid URL.", field=field) from None
    if parts.scheme not in ("http", "https"):
        raise Invalid("Only http:// and https:// URLs are allowed.", field=field)
    host = parts.hostname
    if not host:
        raise Invalid("The URL has no host.", field=field)
    if parts.username or parts.password:
        raise Invalid("The URL may not carry a user name or password.", field=field)
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise Invalid(f"The host '{host}' cannot be resolved.", field=field)
    bad = [a for a in addresses if forbidden(a, allow_loopback=allow_loopback)]
    if bad:
        raise Invalid(
            f"The host '{host}' resolves to {bad[0]}, an internal, private or metadata "
            f"address; {purpose} may only go to public addresses.",
            field=field,
        )
    return CheckedUrl(url.strip(), parts.scheme, host, port, addresses[0])
