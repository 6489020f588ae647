"""Notification delivery in each API process: the outbox sent, offline machines noticed.

The loop `orgs.notifications.Deliverer` ran, on the service base. Its home is the
notifications package (orgs/notifications/, being rewritten): once that lands, this
class replaces its `Deliverer` there (the base is importable from orgs) and
flows.wiring imports it from there.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from flows.dispatch.service import Service
from orgs import notifications
from orgs.config import Settings
from orgs.db import Database

PRUNE_EVERY_S: Final = 3600.0


class NotificationDelivery(Service):
    def __init__(self, db: Database, settings: Settings) -> None:
        super().__init__(
            "notifications",
            settings.notifications_poll_s,
            enabled=settings.notifications_enabled,
            # emit() sets it when a committed change queued a notification.
            wakeup=notifications._wake,
        )
        self.db = db
        self.settings = settings
        self._pool: ThreadPoolExecutor | None = None
        self._last_sweep = self._last_prune = float("-inf")

    def on_start(self) -> None:
        self._pool = ThreadPoolExecutor(
            notifications.SENDERS, thread_name_prefix="cshare-notify-send"
        )

    def on_stopped(self) -> None:
        if self._pool is not None:
            # Sends in flight end by their own timeouts; do not wait for them here.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def run_once(self) -> None:
        if notifications.deliver_due(self.db, self.settings, pool=self._pool) > 0:
            self.wake()  # a full batch may have more behind it
        now = time.monotonic()
        if now - self._last_sweep > self.settings.notifications_offline_sweep_s:
            self._last_sweep = now
            notifications.sweep_offline_machines(self.db)
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            notifications._prune(self.db)
