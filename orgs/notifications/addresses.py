"""Server-side request forgery: which hosts a notification may connect to.

Only http(s), and every address the host resolves to must be public: no loopback,
private, link-local, cloud metadata, multicast or reserved ranges (loopback only with
`CSHARE_NOTIFICATIONS_ALLOW_LOOPBACK`, for tests and single-machine setups).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from orgs.notifications.models import MAX_URL_LENGTH
from policies.errors import Invalid

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _forbidden(address: Address, allow_loopback: bool) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:169.254.169.254 is still the metadata host
    if address.is_loopback:
        return not allow_loopback
    # `is_global` is False for private, link-local (169.254/16, fe80::/10, so the cloud
    # metadata hosts 169.254.169.254 and fd00:ec2::254 in fc00::/7), shared (100.64/10),
    # reserved, unspecified and documentation ranges.
    return not address.is_global or address.is_multicast


def _resolve(host: str, port: int) -> list[Address]:
    try:
        literal = ipaddress.ip_address(host)
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
class CheckedUrl:
    url: str
    scheme: str
    host: str
    port: int
    address: Address  # the vetted address the connection must go to


def validate_url(url: str, *, field: str, allow_loopback: bool) -> CheckedUrl:
    """The URL, checked: http(s), a host, and only public addresses. `Invalid(field)`."""
    if len(url) > MAX_URL_LENGTH:
        raise Invalid(f"The URL may be at most {MAX_URL_LENGTH} characters.", field=field)
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
    addresses = _resolve(host, port)
    if not addresses:
        raise Invalid(f"The host '{host}' cannot be resolved.", field=field)
    bad = [a for a in addresses if _forbidden(a, allow_loopback)]
    if bad:
        raise Invalid(
            f"The host '{host}' resolves to {bad[0]}, an internal, private or metadata "
            "address; notifications may only go to public addresses.",
            field=field,
        )
    return CheckedUrl(url.strip(), parts.scheme, host, port, addresses[0])
