"""Who is calling: the peer address, or X-Forwarded-For's client behind trusted proxies.

X-Forwarded-For is only believed when the peer is listed in `CSHARE_TRUSTED_PROXIES`;
then its hops are read from the right (the ones the proxies appended), skipping trusted
proxies, and the first other hop is the client. Anything further left was written by
the client itself and is ignored. Launch uvicorn with the same list
(`--forwarded-allow-ips`), as `cshare server` and `cshare up` do, or its own proxy
handling rewrites the peer first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(host: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: list[str], networks: Sequence[Network]) -> str:
    if not peer:
        return "unknown"
    if not _trusted(peer, networks):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop[:100]
    return hops[0] if hops else peer  # every hop is a trusted proxy


async def get_client_address(request: Request) -> str:
    networks: list[Network] = request.app.state.trusted_proxies
    peer = request.client.host if request.client else None
    return client_address(peer, request.headers.getlist("x-forwarded-for"), networks)


ClientAddress = Annotated[str, Depends(get_client_address)]
