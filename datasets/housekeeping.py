"""Dataset housekeeping in each API process: purge stored bytes nothing refers to.

Deleting a version purges its bytes at once. What can be left behind: the bytes of a
deleted organization's datasets in the default store (the deletion cascade is one
database transaction and must not touch a store), and bytes whose purge a store refused
for a while. This thread runs `catalog.collect_garbage` every
`CSHARE_DATASET_GC_INTERVAL_S` (0 turns it off). Several API replicas may run it at
once: each blob is decided under its row lock, so bytes a live version shares with a
deleted one (the default store is content-addressed across organizations) stay. It
also removes upload temp files a killed process left in the local default store.
"""

from __future__ import annotations

import logging
import threading

from datasets import catalog, stores
from datasets.local import LocalStorage
from orgs.config import Settings
from orgs.db import Database

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One pass; returns how many objects were removed."""
        with self.db.session() as session:
            purged = catalog.collect_garbage(session, self.settings)
        if purged:
            log.info("dataset housekeeping removed %d unreferenced objects", purged)
        backend = stores.default_store(self.settings)
        if isinstance(backend, LocalStorage) and (swept := backend.sweep_temp()):
            log.info("dataset housekeeping removed %d abandoned upload temp files", swept)
        return purged

    def start(self) -> None:
        if self._thread is not None or self.settings.dataset_gc_interval_s <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cshare-dataset-gc", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        # The first pass waits one interval: start-up is busy enough, and nothing is lost.
        while not self._stop.wait(self.settings.dataset_gc_interval_s):
            try:
                self.run_once()
            except Exception:  # a store or database hiccup must not end the thread
                log.exception("dataset housekeeping failed; trying again next interval")
