"""Dataset housekeeping in each API process: purge stored bytes nothing refers to.

Deleting a version purges its bytes at once. What can be left behind: the bytes of a
deleted organization's datasets in the default store (the deletion cascade is one
database transaction and must not touch a store), and bytes whose purge a store refused
for a while. This service runs `catalog.collect_garbage` every
`CSHARE_DATASET_GC_INTERVAL_S` (0 turns it off). Several API replicas may run it at
once: each blob is decided under its row lock, so bytes a live version shares with a
deleted one (the default store is content-addressed across organizations) stay. It
also removes upload temp files a killed process left in the local default store, and
forgets why removed machines' tokens stopped working after 30 days.
"""

from __future__ import annotations

import logging

from datasets import catalog, stores
from datasets.local import LocalStorage
from flows.dispatch.service import Service
from orgs import machines
from orgs.config import Settings
from orgs.db import Database, utcnow

log = logging.getLogger(__name__)


class DatasetGarbageCollector(Service):
    def __init__(self, db: Database, settings: Settings) -> None:
        interval = settings.dataset_gc_interval_s
        super().__init__(
            "dataset-gc",
            interval,
            enabled=interval > 0,
            # The first pass waits one interval: start-up is busy enough, nothing is lost.
            initial_delay_s=interval,
            backoff_max_s=interval,
        )
        self.db = db
        self.settings = settings

    def run_once(self) -> int:
        """One pass; returns how many objects were removed."""
        with self.db.session() as session:
            purged = catalog.collect_garbage(session, self.settings)
        with self.db.session() as session:
            machines.prune_retired_tokens(session, utcnow())
        if purged:
            log.info("dataset housekeeping removed %d unreferenced objects", purged)
        backend = stores.default_store(self.settings)
        if isinstance(backend, LocalStorage) and (swept := backend.sweep_temp()):
            log.info("dataset housekeeping removed %d abandoned upload temp files", swept)
        return purged
