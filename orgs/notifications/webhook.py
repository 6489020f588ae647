"""The signed generic webhook: our own small sender, not apprise's json:// plugin.

Why not apprise: its JSON plugin posts its own envelope (`{version, title, message,
type}`) that it serializes inside `send()`, and its extra headers (`+Header=value`) are
fixed when the URL is parsed. A signature over the exact body bytes and a fresh
timestamp cannot be added that way, and receivers of today's envelope would break.
Sending it ourselves also lets the connection go to the address that was just checked
(apprise resolves the name again), which matters here because the host is the user's.

Signing: `X-CShare-Timestamp: <unix seconds>` and
`X-CShare-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from orgs.config import Settings
from orgs.notifications.addresses import validate_url
from orgs.notifications.outcome import Outcome
from policies.errors import Invalid

USER_AGENT: Final = "cshare-notifications/0.1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-CShare-Signature` value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def envelope(
    delivery_id: int, event: str, org_slug: str, occurred_at: datetime, data: dict[str, Any]
) -> bytes:
    return json.dumps(
        {
            "id": str(delivery_id),
            "event": event,
            "org": org_slug,
            "occurred_at": occurred_at.isoformat(),
            "data": data,
        },
        separators=(",", ":"),
    ).encode()


def post(
    url: str, body: bytes, *, delivery_id: int, event: str, secret: str | None, settings: Settings
) -> Outcome:
    """POST `body` to `url` (checked again now), signed when there is a secret."""
    try:
        checked = validate_url(
            url, field="url", allow_loopback=settings.notifications_allow_loopback
        )
    except Invalid as exc:
        return Outcome(False, None, exc.detail)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-CShare-Event": event,
        "X-CShare-Delivery": str(delivery_id),
    }
    if secret:
        timestamp = int(time.time())
        headers["X-CShare-Timestamp"] = str(timestamp)
        headers["X-CShare-Signature"] = sign(secret, timestamp, body)
    # Connect to the address that was just vetted (DNS rebinding cannot swap it in
    # between); Host and TLS SNI keep the name.
    parts = urlsplit(checked.url)
    ip = checked.address
    ip_host = f"[{ip}]" if ip.version == 6 else str(ip)
    pinned = urlunsplit(
        (parts.scheme, f"{ip_host}:{checked.port}", parts.path or "/", parts.query, "")
    )
    default_port = 443 if checked.scheme == "https" else 80
    headers["Host"] = (
        checked.host if checked.port == default_port else f"{checked.host}:{checked.port}"
    )
    timeout = httpx.Timeout(
        settings.notifications_read_timeout_s, connect=settings.notifications_connect_timeout_s
    )
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "POST",
                pinned,
                content=body,
                headers=headers,
                extensions={"sni_hostname": checked.host},
            ) as response,
        ):
            # The status is all we need: never read (or wait for) the body.
            status = response.status_code
    except httpx.TimeoutException:
        return Outcome(False, None, "timed out")
    except httpx.HTTPError as exc:
        return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= status < 300:
        return Outcome(True, status, "")
    return Outcome(False, status, f"HTTP {status}")
