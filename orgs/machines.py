"""The machine registry: members' machines shared with their organization.

A machine joins when its agent registers it with the member's token; it gets a machine
token (shown once, stored hashed, like every other token). Its status is `pending` until
an admin approves or rejects it, or `approved` at once where the organization does not
require approval. Health is derived, never stored: a machine is `online` while its agent
has heartbeated within the organization's `machines.offline_after_s`.

This module knows nothing about jobs (`orgs` sits below `flows`): what happens to the
runs on a machine that is rejected, removed or goes silent is `flows.claims`' business,
plugged in through `on_machine_revoked`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orgs import audit, security, settings_doc
from orgs.context import OrgContext
from orgs.db import utcnow
from orgs.models import Machine, Organization, RetiredMachineToken, User
from orgs.scopes import scope_clause
from policies import access
from policies.access import MachineFacts, Viewer
from policies.errors import Conflict, Invalid, LimitExceeded, NotFound, Unauthenticated
from policies.names import refuse_bidi
from policies.permissions import Permission

__all__ = [
    "MACHINE_REMOVED",
    "MAX_SLOTS",
    "ORG_DELETED",
    "OWNER_NOT_MEMBER",
    "Capacity",
    "Health",
    "IssuedMachine",
    "MachineStatus",
    "MachineView",
    "approve",
    "authenticate",
    "capacity",
    "get",
    "health_of",
    "heartbeat",
    "list_machines",
    "on_machine_revoked",
    "register",
    "reject",
    "remove",
    "view",
]

# Why a machine token stopped working: the `error` code of the 401 its agent gets (stable).
MACHINE_REMOVED: Final = "machine_removed"
OWNER_NOT_MEMBER: Final = "owner_not_member"
ORG_DELETED: Final = "org_deleted"

NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_SLOTS: Final = 256
# Hardware is a description for people (CPU, memory, GPUs); a few KB is plenty, and the
# cap keeps a hostile agent from storing megabytes per heartbeat.
MAX_HARDWARE_BYTES: Final = 8 * 1024
MAX_REASON_CHARS: Final = 500
# The lowest `machines.offline_after_s` an organization may set (orgs.settings_doc).
MIN_OFFLINE_AFTER_S: Final = 5


class MachineStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"


class Health(StrEnum):
    online = "online"
    offline = "offline"


@dataclass(frozen=True, slots=True)
class IssuedMachine:
    token: str  # the secret, shown once
    record: Machine


@dataclass(frozen=True, slots=True)
class MachineView:
    """A machine as people see it: the row plus its owner's name and derived health."""

    machine: Machine
    owner_name: str
    health: Health
    offline_after_s: int

    @property
    def running(self) -> int:
        return self.machine.running_jobs if self.health is Health.online else 0

    @property
    def free_slots(self) -> int:
        """Slots that could take a job now: approved and online machines only."""
        if self.machine.status != MachineStatus.approved or self.health is not Health.online:
            return 0
        return max(0, self.machine.slots - self.machine.running_jobs)

    @property
    def idle(self) -> bool:
        return self.health is Health.online and self.machine.running_jobs == 0


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the overview shows: machines, and free slots on approved online machines."""

    total_machines: int
    approved: int
    online: int
    free_slots: int
    total_slots: int
    online_by_type: Mapping[str, int] = field(default_factory=dict)
    free_slots_by_type: Mapping[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- hooks

# `hook(session, machine, reason)`: the machine stops taking work now (rejected, removed,
# or its owner left). Runs inside the changing transaction, before the row changes; it may
# only change rows (Prefect is reached after the commit, see flows.claims).
RevokedHook = Callable[[Session, Machine, str], None]
_revoked_hooks: list[RevokedHook] = []


def on_machine_revoked(hook: RevokedHook) -> RevokedHook:
    if hook not in _revoked_hooks:
        _revoked_hooks.append(hook)
    return hook


def _revoked(session: Session, machine: Machine, reason: str) -> None:
    for hook in _revoked_hooks:
        hook(session, machine, reason)


def _retire(session: Session, machine: Machine, code: str, detail: str) -> None:
    """Remember why the machine's token dies with its row, for its agent (no commit)."""
    session.add(
        RetiredMachineToken(
            token_hash=machine.token_hash,
            machine_id=machine.id,
            org_id=machine.org_id,
            code=code,
            detail=detail,
        )
    )


# ------------------------------------------------------------------------- helpers


def _machine_settings(org: Organization) -> settings_doc.MachineSettings:
    return settings_doc.load(org.settings).machines


def health_of(machine: Machine, offline_after_s: float, now: datetime | None = None) -> Health:
    """Online while the last heartbeat is at most `offline_after_s` old."""
    seen = machine.last_heartbeat_at
    if seen is None:
        return Health.offline
    now = now or utcnow()
    return Health.online if now - seen <= timedelta(seconds=offline_after_s) else Health.offline


def _snapshot(m: Machine) -> dict[str, Any]:
    return {
        "name": m.name,
        "machine_type": m.machine_type,
        "slots": m.slots,
        "status": m.status,
        "owner_id": str(m.owner_id),
    }


def validate_name(name: str) -> str:
    refuse_bidi(name, field="name")
    if not NAME_RE.fullmatch(name):
        raise Invalid(
            "Machine names are 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
            field="name",
        )
    return name


def _validate_hardware(hardware: Mapping[str, Any]) -> dict[str, Any]:
    try:
        size = len(json.dumps(hardware, allow_nan=False))
    except (TypeError, ValueError):
        raise Invalid("hardware must be a JSON object.", field="hardware") from None
    if size > MAX_HARDWARE_BYTES:
        raise Invalid(
            f"hardware is {size} bytes of JSON; at most {MAX_HARDWARE_BYTES} are kept.",
            field="hardware",
        )
    return dict(hardware)


def _validate_slots(slots: int) -> int:
    if not 1 <= slots <= MAX_SLOTS:
        raise Invalid(f"slots must be between 1 and {MAX_SLOTS}.", field="slots")
    return slots


def _not_found() -> NotFound:
    return NotFound("No such machine in this organization.", code="machine_not_found")


def view(session: Session, org: Organization, machine: Machine) -> MachineView:
    owner = session.get(User, machine.owner_id)
    offline_after = _machine_settings(org).offline_after_s
    return MachineView(
        machine=machine,
        owner_name=owner.name if owner is not None else "",
        health=health_of(machine, offline_after),
        offline_after_s=offline_after,
    )


# ---------------------------------------------------------------- member's actions


def register(
    ctx: OrgContext,
    session: Session,
    *,
    name: str,
    machine_type: str,
    hardware: Mapping[str, Any],
    slots: int,
) -> IssuedMachine:
    """Register the caller's machine; approved at once unless the org requires approval.

    `max_machines_per_user` counts the caller's pending and approved machines (a
    rejected one no longer takes a place). The count and the insert happen under the
    organization row lock, so two registrations racing for the last place cannot both win.
    """
    ctx.require(Permission.machines_register)
    validate_name(name)
    _validate_slots(slots)
    hardware = _validate_hardware(hardware)
    # Lock first, then read the settings: a concurrent settings change waits for us.
    session.refresh(ctx.org, with_for_update=True)
    settings = settings_doc.load(ctx.org.settings)
    types = settings.limits.machine_types
    if machine_type not in types:
        known = ", ".join(sorted(types))
        raise Invalid(
            f"Machine type '{machine_type}' is not offered by this organization "
            f"(known: {known}); an admin adds types under machine_types in the limits.",
            field="machine_type",
        )
    cap = settings.limits.limits.max_machines_per_user
    have = session.scalar(
        select(func.count())
        .select_from(Machine)
        .where(
            Machine.org_id == ctx.org.id,
            Machine.owner_id == ctx.user.id,
            Machine.status != MachineStatus.rejected,
        )
    )
    if (have or 0) >= cap:
        raise LimitExceeded(
            f"You already have {have} of {cap} machines registered in this organization "
            "(max_machines_per_user); remove one first.",
            code="machine_limit",
        )
    if session.scalar(select(Machine.id).where(Machine.org_id == ctx.org.id, Machine.name == name)):
        raise _name_taken(name)
    approved_now = not settings.machines.approval_required
    token = security.new_token("machine")
    machine = Machine(
        org_id=ctx.org.id,
        owner_id=ctx.user.id,
        name=name,
        machine_type=machine_type,
        hardware=hardware,
        slots=slots,
        status=MachineStatus.approved if approved_now else MachineStatus.pending,
        status_reason="",
        token_hash=security.hash_token(token),
        decided_at=utcnow() if approved_now else None,
    )
    session.add(machine)
    try:
        session.flush()
    except IntegrityError as exc:  # the same name, registered concurrently
        session.rollback()
        raise _name_taken(name) from exc
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="machine.registered",
        target_type="machine",
        target_id=machine.id,
        after={**_snapshot(machine), "approved_automatically": approved_now},
    )
    session.commit()
    return IssuedMachine(token, machine)


def _name_taken(name: str) -> Conflict:
    return Conflict(
        f"A machine named '{name}' is already registered in this organization; pick "
        "another name or remove the old machine first.",
        code="machine_name_taken",
    )


def visible_machines(viewer: Viewer) -> ColumnElement[bool]:
    """`policies.access.machine_view_scope` as SQL: the one WHERE clause of machine lists."""
    return scope_clause(
        access.machine_view_scope(viewer),
        Machine.org_id,
        viewer.org_id,
        Machine.owner_id == viewer.user_id,
    )


def list_machines(
    session: Session,
    ctx: OrgContext,
    *,
    status: MachineStatus | None = None,
    machine_type: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[MachineView], int]:
    """The organization's machines the caller may see (`policies.access`), oldest first."""
    org = ctx.org
    where = [visible_machines(ctx.viewer)]
    if status is not None:
        where.append(Machine.status == status.value)
    if machine_type is not None:
        where.append(Machine.machine_type == machine_type)
    rows = session.execute(
        select(Machine, User.name)
        .join(User, User.id == Machine.owner_id)
        .where(*where)
        .order_by(Machine.created_at, Machine.id)
        .limit(limit)
        .offset(offset)
    ).all()
    total = session.scalar(select(func.count()).select_from(Machine).where(*where)) or 0
    offline_after = _machine_settings(org).offline_after_s
    now = utcnow()
    items = [
        MachineView(m, owner, health_of(m, offline_after, now), offline_after) for m, owner in rows
    ]
    return items, int(total)


def get(session: Session, ctx: OrgContext, machine_id: uuid.UUID) -> Machine:
    machine = session.get(Machine, machine_id)
    if machine is None or not access.can_view_machine(ctx.viewer, MachineFacts.of(machine)):
        raise _not_found()
    return machine


def _lock(session: Session, org: Organization, machine_id: uuid.UUID) -> Machine:
    machine = session.scalars(
        select(Machine).where(Machine.id == machine_id).with_for_update()
    ).first()
    if machine is None or machine.org_id != org.id:
        raise _not_found()
    return machine


# ----------------------------------------------------------------- admin's actions


def _decide(
    ctx: OrgContext,
    session: Session,
    machine_id: uuid.UUID,
    status: MachineStatus,
    reason: str,
) -> Machine:
    ctx.require(Permission.machines_approve)
    if len(reason) > MAX_REASON_CHARS:
        raise Invalid(f"The reason may have at most {MAX_REASON_CHARS} characters.", field="reason")
    machine = _lock(session, ctx.org, machine_id)
    if machine.status == status and machine.status_reason == reason:
        return machine  # repeating a decision is not an error, and not a new event
    before = _snapshot(machine)
    if status is MachineStatus.rejected:
        _revoked(session, machine, reason or "The machine was rejected by an admin.")
    machine.status = status.value
    machine.status_reason = reason
    machine.decided_by = ctx.user.id
    machine.decided_at = utcnow()
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action=f"machine.{status.value}",
        target_type="machine",
        target_id=machine.id,
        before=before,
        after={**_snapshot(machine), **({"reason": reason} if reason else {})},
    )
    session.commit()
    return machine


def approve(ctx: OrgContext, session: Session, machine_id: uuid.UUID) -> Machine:
    """Let the machine take the organization's jobs (also re-admits a rejected one)."""
    return _decide(ctx, session, machine_id, MachineStatus.approved, "")


def reject(ctx: OrgContext, session: Session, machine_id: uuid.UUID, reason: str = "") -> Machine:
    """Refuse the machine: its agent stops, and runs on it are cancelled (flows.claims)."""
    return _decide(ctx, session, machine_id, MachineStatus.rejected, reason.strip())


def remove(ctx: OrgContext, session: Session, machine_id: uuid.UUID) -> Machine:
    """Delete the machine (its owner, or an admin). The token dies with the row."""
    machine = _lock(session, ctx.org, machine_id)
    facts, viewer = MachineFacts.of(machine), ctx.viewer
    if not access.can_view_machine(viewer, facts):
        raise _not_found()
    access.require(
        access.can_manage_machine(viewer, facts), access.manage_machine_permission(viewer, facts)
    )
    _revoked(session, machine, f"The machine '{machine.name}' was removed from the organization.")
    _retire(
        session,
        machine,
        MACHINE_REMOVED,
        f"Machine '{machine.name}' was removed from the organization '{ctx.org.slug}'.",
    )
    before = _snapshot(machine)
    session.delete(machine)
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="machine.removed",
        target_type="machine",
        target_id=machine.id,
        before=before,
    )
    session.commit()
    return machine


def revoke_member_machines(session: Session, org: Organization, user_id: uuid.UUID) -> None:
    """Cascade hook (wired in flows.wiring): the owner leaves, so their machines stop
    taking work (rows only)."""
    machines = session.scalars(
        select(Machine).where(Machine.org_id == org.id, Machine.owner_id == user_id)
    ).all()
    for machine in machines:
        _revoked(session, machine, f"The owner of machine '{machine.name}' left the organization.")
        _retire(
            session,
            machine,
            OWNER_NOT_MEMBER,
            f"The owner of machine '{machine.name}' is no longer a member of the "
            f"organization '{org.slug}'.",
        )


def retire_org_machines(session: Session, org: Organization) -> None:
    """Cascade hook: the organization goes, so do its machines' tokens (rows only)."""
    for machine in session.scalars(select(Machine).where(Machine.org_id == org.id)):
        _retire(
            session,
            machine,
            ORG_DELETED,
            f"The organization '{org.slug}' of machine '{machine.name}' was deleted.",
        )


# ------------------------------------------------------------------- agent's side


def authenticate(session: Session, token: str) -> Machine:
    """The machine behind a machine token; 401 for anything else.

    A retired token (machine removed, owner no longer a member, organization deleted)
    is refused with that reason as its code; an unknown one with `bad_machine_token`.
    Session and personal tokens are refused too: they are not machine tokens.
    """
    if not token.startswith(security.TOKEN_KINDS["machine"] + "_"):
        raise Unauthenticated(
            "This call needs a machine token (the one `cshare agent start` received).",
            code="bad_machine_token",
        )
    token_hash = security.hash_token(token)
    machine = session.scalars(select(Machine).where(Machine.token_hash == token_hash)).first()
    if machine is None:
        retired = session.get(RetiredMachineToken, token_hash)
        if retired is not None:
            raise Unauthenticated(retired.detail, code=retired.code)
        raise Unauthenticated(
            "The machine token is unknown: the machine was removed, or the token is wrong.",
            code="bad_machine_token",
        )
    return machine


# How long a removed machine's agent is told why its token stopped working; after that
# it hears "unknown token" like any stale credential (the agent asks within seconds).
RETIRED_TOKEN_KEEP: Final = timedelta(days=30)


def prune_retired_tokens(session: Session, now: datetime) -> int:
    """Forget retired-token reasons older than RETIRED_TOKEN_KEEP; how many. Commits."""
    stale = session.scalars(
        select(RetiredMachineToken.token_hash).where(
            RetiredMachineToken.retired_at < now - RETIRED_TOKEN_KEEP
        )
    ).all()
    for token_hash in stale:
        row = session.get(RetiredMachineToken, token_hash)
        if row is not None:
            session.delete(row)
    session.commit()
    return len(stale)


def heartbeat(session: Session, machine: Machine, *, running: int, now: datetime) -> Machine:
    """Record that the agent is alive and how many runs it has. No commit."""
    machine.last_heartbeat_at = now
    machine.running_jobs = max(0, min(running, MAX_SLOTS))
    return machine


def docker_summary(hardware: Mapping[str, Any]) -> str:
    """`yes (engine 20.10.24)` or `no`, from what the agent reported."""
    engine = hardware.get("docker")
    if not isinstance(engine, Mapping):
        return "no"
    version = engine.get("version")
    return f"yes (engine {version})" if version else "yes"


def note_docker(machine: Machine, docker: Mapping[str, Any] | None) -> None:
    """The Docker engine the agent reaches now (`hardware.docker`: {version} or None):
    container jobs are claimed only by machines with one. No commit."""
    engine = _validate_hardware({"docker": dict(docker) if docker else None})["docker"]
    if (machine.hardware or {}).get("docker") != engine:
        machine.hardware = {**(machine.hardware or {}), "docker": engine}


def offline_after_s(session: Session, machine: Machine) -> int:
    org = session.get(Organization, machine.org_id)
    return _machine_settings(org).offline_after_s if org is not None else 60


# ------------------------------------------------------------------------ overview


def capacity(session: Session, org: Organization, now: datetime | None = None) -> Capacity:
    """Machines and free slots for the overview: only approved, online machines count."""
    offline_after = _machine_settings(org).offline_after_s
    now = now or utcnow()
    machines: Sequence[Machine] = session.scalars(
        select(Machine).where(Machine.org_id == org.id)
    ).all()
    approved = online = free = total_slots = 0
    online_by_type: dict[str, int] = {}
    free_by_type: dict[str, int] = {}
    for m in machines:
        if m.status != MachineStatus.approved:
            continue
        approved += 1
        total_slots += m.slots
        if health_of(m, offline_after, now) is not Health.online:
            continue
        online += 1
        spare = max(0, m.slots - m.running_jobs)
        free += spare
        online_by_type[m.machine_type] = online_by_type.get(m.machine_type, 0) + 1
        free_by_type[m.machine_type] = free_by_type.get(m.machine_type, 0) + spare
    return Capacity(
        total_machines=len(machines),
        approved=approved,
        online=online,
        free_slots=free,
        total_slots=total_slots,
        online_by_type=online_by_type,
        free_slots_by_type=free_by_type,
    )
