"""Chat channels and e-mail, sent by apprise.

A chat target is the webhook URL the service gave the admin (Slack incoming webhook,
Microsoft Teams workflow, Discord webhook); apprise's own parser turns it into its
plugin, so a URL apprise does not recognise as that service is refused. E-mail goes
through the operator's SMTP server (`CSHARE_SMTP_*`), never a user-given host.

SSRF: the host apprise connects to is taken from the plugin (Slack's and Discord's are
fixed by apprise, a Teams workflow's must be a Microsoft host) and checked like any
other notification host when the target is saved and before each delivery. apprise
resolves the name again when it connects; that window is harmless because the names it
can connect to belong to the services, not to whoever configured the target.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

import apprise
from apprise.plugins.base import NotifyBase
from apprise.plugins.discord import NotifyDiscord
from apprise.plugins.email import NotifyEmail
from apprise.plugins.slack import NotifySlack
from apprise.plugins.workflows import NotifyWorkflows

from orgs.config import Settings
from orgs.notifications.outcome import Outcome
from policies.errors import Invalid

CHAT_KINDS: Final = ("slack", "msteams", "discord")
_PLUGIN: Final[dict[str, type[NotifyBase]]] = {
    "slack": NotifySlack,
    "msteams": NotifyWorkflows,
    "discord": NotifyDiscord,
}
_SERVICE: Final = {"slack": "Slack", "msteams": "Microsoft Teams", "discord": "Discord"}
# Where Power Automate (the Teams "workflows" that replaced Office 365 connectors) puts
# its webhook URLs. A workflow URL names its host, so it must be one of these.
TEAMS_HOST_SUFFIXES: Final = (".logic.azure.com", ".api.powerplatform.com")

_ASSET: Final = apprise.AppriseAsset(
    app_id="Compute Share",
    app_desc="Compute Share notifications",
    # A redirect could lead a request to an address nobody checked.
    http_redirects=False,
    storage_mode="memory",
)


def chat_plugin(kind: str, url: str, *, field: str) -> NotifyBase:
    """apprise's plugin for a chat webhook URL of `kind`; `Invalid(field)` when the URL
    is not one that service issues."""
    expected = _PLUGIN[kind]
    service = _SERVICE[kind]
    parts = urlsplit(url.strip())
    if parts.scheme != "https":
        raise Invalid(f"A {service} webhook URL starts with https://.", field=field)
    if kind == "msteams" and not (parts.hostname or "").endswith(TEAMS_HOST_SUFFIXES):
        raise Invalid(
            "A Microsoft Teams workflow URL is on a Power Automate host "
            f"(*{' or *'.join(TEAMS_HOST_SUFFIXES)}).",
            field=field,
        )
    plugin = apprise.Apprise.instantiate(url.strip(), asset=_ASSET)
    if not isinstance(plugin, expected):
        raise Invalid(f"Not a {service} webhook URL.", field=field)
    return plugin


def endpoint(plugin: NotifyBase) -> str:
    """The scheme, host and port apprise will connect to for `plugin`, as a URL."""
    if isinstance(plugin, NotifySlack):
        base = NotifySlack.webhook_url  # hooks, workflows and triggers share the host
    elif isinstance(plugin, NotifyDiscord):
        base = NotifyDiscord.notify_url
    elif isinstance(plugin, NotifyWorkflows):
        port = f":{plugin.port}" if plugin.port else ""
        base = f"https://{plugin.host}{port}/"
    else:
        raise TypeError(f"no endpoint for {type(plugin).__name__}")
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "/", "", ""))


def smtp_configured(settings: Settings) -> bool:
    return bool(settings.smtp_host and settings.smtp_from)


def email_plugin(settings: Settings, to: str) -> NotifyBase:
    """apprise's SMTP plugin for one recipient, on the operator's server."""
    host = settings.smtp_host
    if not (host and settings.smtp_from):
        raise Invalid("E-mail needs the server's SMTP settings (CSHARE_SMTP_HOST, _FROM).")
    secure = settings.smtp_ssl or settings.smtp_starttls
    scheme = "mailtos" if secure else "mailto"
    auth = ""
    if settings.smtp_user:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
        auth = f"{quote(settings.smtp_user, safe='')}:{quote(password, safe='')}@"
    netloc_host = f"[{host}]" if ":" in host else host
    query = {
        "smtp": host,
        "from": settings.smtp_from,
        "to": to,
        "format": "text",
    }
    if secure:
        query["mode"] = "ssl" if settings.smtp_ssl else "starttls"
    params = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    url = f"{scheme}://{auth}{netloc_host}:{settings.smtp_port}/?{params}"
    plugin = apprise.Apprise.instantiate(url, asset=_ASSET)
    if not isinstance(plugin, NotifyEmail):
        raise Invalid("The SMTP settings or the address are not usable.", field="email")
    return plugin


class _Capture(logging.Handler):
    """apprise reports why a send failed only in its log: keep the warnings of the
    sending thread (senders run in parallel threads) while it sends."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines: list[str] | None = getattr(self.local, "lines", None)
        if lines is not None:
            lines.append(record.getMessage())

    @contextmanager
    def collect(self) -> Iterator[list[str]]:
        lines: list[str] = []
        self.local.lines = lines
        try:
            yield lines
        finally:
            self.local.lines = None


_capture = _Capture()
_apprise_log = logging.getLogger("apprise")
_apprise_log.addHandler(_capture)
if _apprise_log.level == logging.NOTSET:
    # Independent of the root level: the warnings are what explains a failure.
    _apprise_log.setLevel(logging.WARNING)


def send(
    plugin: NotifyBase, *, title: str, body: str, settings: Settings, severity: str = "info"
) -> Outcome:
    """Send one message with `plugin`, within the notification timeouts."""
    plugin.socket_connect_timeout = settings.notifications_connect_timeout_s
    plugin.socket_read_timeout = settings.notifications_read_timeout_s
    with _capture.collect() as lines:
        try:
            ok = plugin.notify(
                body=body,
                title=title,
                notify_type=apprise.NotifyType(severity),
                body_format=apprise.NotifyFormat.TEXT,
            )
        except Exception as exc:  # a plugin bug must cost one delivery, not the thread
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])
    if ok:
        return Outcome(True, None, "")
    return Outcome(False, None, ("; ".join(lines) or "not sent")[:500])
