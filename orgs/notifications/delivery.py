"""Sending claimed deliveries, and the background thread that does it in every API
process (plus the offline-machine sweep and pruning of old rows)."""

from __future__ import annotations

import logging
import threading
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
from policies.errors import Invalid

log = logging.getLogger("cshare.notifications")

BATCH: Final = 20
SENDERS: Final = 4


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


class Deliverer:
    """The background thread of one API process: deliveries, offline sweep, pruning."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="cshare-notify-send")
        self._thread = threading.Thread(target=self._run, name="cshare-notify", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        outbox.wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._pool is not None:
            # Sends in flight end by their own timeouts; do not wait for them here.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _run(self) -> None:
        last_sweep = 0.0
        last_prune = 0.0
        while not self._stop.is_set():
            busy = False
            try:
                busy = deliver_due(self.db, self.settings, pool=self._pool) > 0
                if time.monotonic() - last_sweep > self.settings.notifications_offline_sweep_s:
                    last_sweep = time.monotonic()
                    sweep_offline_machines(self.db)
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    outbox.prune(self.db)
            except Exception:
                # The database restarting or a migration running must not end the thread.
                log.exception("notification delivery pass failed")
            if not busy:
                outbox.wake.wait(self.settings.notifications_poll_s)
                outbox.wake.clear()
