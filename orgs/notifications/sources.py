"""Where the events that are not the job ledger's come from.

- `member.joined`: any new non-owner membership (a session `before_flush` listener, so
  every path that adds a member is covered without each calling us);
- `member.left`: `member_left`, wired to `orgs.cascade.on_member_removed` at start-up
  (flows.wiring; leaving and being removed);
- `machine.pending_approval`: a machine row inserted or put back in status `pending`
  (the same listener);
- `machine.offline`: the delivery thread's sweep notices an approved machine whose last
  heartbeat is older than its org's `machines.offline_after_s` (once per silence).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import event, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, UOWTransaction

from orgs.db import Database, utcnow
from orgs.models import Machine, Membership, Organization, User, new_id
from orgs.notifications.models import MachineOfflineNotice, NotificationTarget
from orgs.notifications.outbox import emit
from orgs.settings_doc import load as load_settings

# Only silences that started this recently are announced: adding a target must not
# bring a flood about machines that went quiet months ago.
OFFLINE_LOOKBACK: Final = timedelta(hours=24)


def member_left(session: Session, org: Organization, user_id: uuid.UUID) -> None:
    user = session.get(User, user_id)
    emit(
        session,
        org.id,
        "member.left",
        {"user_id": str(user_id), "name": user.name if user else ""},
    )


def _machine_payload(session: Session, machine: Machine) -> dict[str, Any]:
    owner = session.get(User, machine.owner_id) if machine.owner_id else None
    return {
        "machine_id": str(machine.id),
        "name": machine.name,
        "machine_type": machine.machine_type,
        "owner": owner.name if owner else "",
    }


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _ctx: UOWTransaction, _instances: object) -> None:
    for obj in list(session.new):
        if isinstance(obj, Membership) and obj.role != "owner":
            # Owners only arrive by creating the organization: nothing to announce.
            user = session.get(User, obj.user_id)
            emit(
                session,
                obj.org_id,
                "member.joined",
                {"user_id": str(obj.user_id), "name": user.name if user else "", "role": obj.role},
            )
        elif isinstance(obj, Machine) and obj.status == "pending":
            if obj.id is None:
                obj.id = new_id()  # the payload names it; the default would come later
            emit(session, obj.org_id, "machine.pending_approval", _machine_payload(session, obj))
    for obj in list(session.dirty):
        if isinstance(obj, Machine) and obj.status == "pending":
            history = _history(obj, "status")
            if history and "pending" not in history:
                emit(
                    session, obj.org_id, "machine.pending_approval", _machine_payload(session, obj)
                )


def _history(obj: object, attr: str) -> list[Any] | None:
    """The attribute's previous values if it changed in this flush, else None."""
    state = inspect(obj)
    assert state is not None  # mapped instances always have an instance state
    hist = state.attrs[attr].history
    if not hist.added:
        return None
    return list(hist.deleted)


def sweep_offline_machines(db: Database, *, now: datetime | None = None) -> int:
    """Announce approved machines that went silent; once per silence. Returns how many.

    Only orgs with a target are looked at. Safe with several replicas: the notice row is
    updated or inserted under the transaction, and only the writer that changed it emits.
    """
    now = now or utcnow()
    notice = MachineOfflineNotice
    with db.transaction() as session:
        rows = session.execute(
            select(Machine, Organization.settings, notice.heartbeat_at)
            .join(Organization, Organization.id == Machine.org_id)
            .outerjoin(notice, notice.machine_id == Machine.id)
            .where(
                Machine.status == "approved",
                Machine.last_heartbeat_at.is_not(None),
                Machine.last_heartbeat_at < now - timedelta(seconds=5),
                Machine.last_heartbeat_at > now - OFFLINE_LOOKBACK,
                Machine.org_id.in_(select(NotificationTarget.org_id)),
            )
        ).all()
        announced = 0
        for machine, raw_settings, noticed in rows:
            heartbeat = machine.last_heartbeat_at
            assert heartbeat is not None
            if noticed is not None and noticed >= heartbeat:
                continue
            offline_after = load_settings(dict(raw_settings or {})).machines.offline_after_s
            if heartbeat > now - timedelta(seconds=offline_after):
                continue
            if not _mark_offline(session, machine.id, heartbeat, known=noticed is not None):
                continue
            payload = _machine_payload(session, machine)
            payload["last_heartbeat_at"] = heartbeat.isoformat()
            emit(session, machine.org_id, "machine.offline", payload)
            announced += 1
        return announced


def _mark_offline(
    session: Session, machine_id: uuid.UUID, heartbeat: datetime, known: bool
) -> bool:
    """Record the announcement; False when another replica recorded it first."""
    if known:
        result = session.execute(
            update(MachineOfflineNotice)
            .where(
                MachineOfflineNotice.machine_id == machine_id,
                MachineOfflineNotice.heartbeat_at < heartbeat,
            )
            .values(heartbeat_at=heartbeat)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)
    try:
        with session.begin_nested():
            session.add(MachineOfflineNotice(machine_id=machine_id, heartbeat_at=heartbeat))
    except IntegrityError:
        return False
    return True
