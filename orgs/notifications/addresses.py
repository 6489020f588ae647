"""Server-side request forgery: which hosts a notification may connect to.

Only http(s), and every address the host resolves to must be public: no loopback,
private, link-local, cloud metadata, multicast or reserved ranges (loopback only with
`CSHARE_NOTIFICATIONS_ALLOW_LOOPBACK`, for tests and single-machine setups). The rules
are the ones org data stores use too (`orgs.netguard`).
"""

from __future__ import annotations

from orgs.netguard import CheckedUrl, check_url
from orgs.notifications.models import MAX_URL_LENGTH

__all__ = ["CheckedUrl", "validate_url"]


def validate_url(url: str, *, field: str, allow_loopback: bool) -> CheckedUrl:
    """The URL, checked: http(s), a host, and only public addresses. `Invalid(field)`."""
    return check_url(
        url,
        field=field,
        allow_loopback=allow_loopback,
        max_length=MAX_URL_LENGTH,
        purpose="notifications",
    )
