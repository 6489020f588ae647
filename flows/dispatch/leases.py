"""Named leases (table `leases`): one holder among the control plane's replicas.

The dispatcher holds `dispatcher`, the scaler `scaler`. A holder renews its lease every
cycle; a lease not renewed within its TTL goes to whoever asks next.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from flows.models import Lease
from orgs.db import Database, utcnow

__all__ = ["acquire", "release"]


def acquire(db: Database, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the lease; False while another live holder has it."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    with db.transaction() as s:
        result = s.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
            .values(holder=holder, expires_at=expires)
        )
        if getattr(result, "rowcount", 0) == 1:
            return True
        if s.get(Lease, name) is not None:
            return False
        s.add(Lease(name=name, holder=holder, expires_at=expires))
        try:
            s.flush()
        except IntegrityError:
            s.rollback()
            return False
        return True


def release(db: Database, name: str, holder: str) -> None:
    """Let the lease go now (shutting down), if we hold it."""
    with db.transaction() as s:
        s.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
