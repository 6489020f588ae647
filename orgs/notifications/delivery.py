"""Sending claimed deliveries, and the background thread that does it in every API
process (plus the offline-machine sweep and pruning of old rows)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from orgs.config import Settings
from orgs.db import Database, utcnow
from orgs.notifications import channels, outbox, webhook
from orgs.notifications.events import render
from orgs.notifications.outbox import Delivery
from orgs.notifications.outcome import Outcome
from orgs.notifications.sources import sweep_offline_machines
from orgs.notifications.targets import check_url, email_address
from orgs.service import Service
from policies.errors import Invalid

log = logging.getLogger("cshare.notifications")

BATCH: Final = 20
SENDERS: Final = 4
PRUNE_EVERY_S: Final = 3600.0


def send(d: Delivery, settings: Settings) -> Outcome:
    """One attempt; the target is checked again first (its host may resolve elsewhere
    now, the SMTP settings may be gone)."""
    if d.kind == "webhook":
        body = webhook.envelope(d.id, d.event, d.org_slug, d.created_at, d.payload)
        return webhook.post(
            d.url, body, delivery_id=d.id, event=d.event, secret=d.secret, settings=settings
        )
    message = render(d.event, d.org_slug, d.payload, settings.public_url)
    try:
        check_url(d.kind, d.url, field="url", settings=settings)
        if d.kind == "email":
            plugin = channels.email_plugin(settings, email_address(d.url, field="url"))
            return channels.send(
                plugin,
                title=message.title,
                body=message.body,
                settings=settings,
                severity=message.severity,
            )
        plugin = channels.chat_plugin(d.kind, d.url, field="url")
    except Invalid as exc:
        return Outcome(False, None, exc.detail)
    return channels.send(
        plugin, title="", body=message.text, settings=settings, severity=message.severity
    )


def deliver_due(
    db: Database,
    settings: Settings,
    *,
    pool: ThreadPoolExecutor | None = None,
    limit: int = BATCH,
) -> int:
    """One pass: claim due deliveries, send them (concurrently), record the outcomes."""
    batch = outbox.claim(db, utcnow(), limit)
    if not batch:
        return 0

    def one(d: Delivery) -> None:
        outbox.record(db, d, send(d, settings), settings)

    if pool is None:
        for d in batch:
            one(d)
    else:
        # A hanging receiver costs one sender its timeout, not the others their turn.
        for future in [pool.submit(one, d) for d in batch]:
            future.result()
    return len(batch)


class Deliverer(Service):
    """The background service of one API process: deliveries, offline sweep, pruning."""

    def __init__(self, db: Database, settings: Settings) -> None:
        super().__init__(
            "notifications",
            settings.notifications_poll_s,
            enabled=settings.notifications_enabled,
            # emit() sets it when a committed change queued a notification.
            wakeup=outbox.wake,
        )
        self.db = db
        self.settings = settings
        self._pool: ThreadPoolExecutor | None = None
        self._last_sweep = self._last_prune = float("-inf")

    def on_start(self) -> None:
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="cshare-notify-send")

    def on_stopped(self) -> None:
        if self._pool is not None:
            # Sends in flight end by their own timeouts; do not wait for them here.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def run_once(self) -> None:
        if deliver_due(self.db, self.settings, pool=self._pool) > 0:
            self.wake()  # a full batch may have more behind it
        now = time.monotonic()
        if now - self._last_sweep > self.settings.notifications_offline_sweep_s:
            self._last_sweep = now
            sweep_offline_machines(self.db)
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            outbox.prune(self.db)
