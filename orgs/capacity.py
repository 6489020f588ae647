"""Elastic machine types: the capacity provider an admin attaches to a machine type.

A provider starts and stops the type's machines itself: `process` (agent processes on
this host, each with its own work dir) or `docker` (agent containers on a Docker engine
the operator allowed). It keeps between `min_scale` and `max_scale` machines, starting
them for work that waits and stopping one after `grace_period_s` idle (the rules are in
policies.scaling; the loop is flows.dispatch.scaler, the launchers orgs.launchers).

Machines it starts are ordinary machines with their own machine token: owned by the
admin who configured the provider and approved at once (the admin chose to run them),
their token revoked when they stop. Every start and stop is an audit event
(`machine.scaled_up`, `machine.scaled_down`, `machine.replaced`), and so is every change
of the provider (`machine_type.scaling_set`, `machine_type.scaling_removed`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from orgs import audit, security, settings_doc
from orgs.config import Settings
from orgs.context import OrgContext
from orgs.db import utcnow
from orgs.machines import MachineStatus, _retire, _revoked, health_of
from orgs.models import (
    AuditEvent,
    CapacityProvider,
    Machine,
    Membership,
    Organization,
    ProvisionedMachine,
    User,
)
from policies.errors import Conflict, Invalid, NotFound
from policies.permissions import Permission, Role, allows
from policies.scaling import DEFAULT_GRACE_S, DEFAULT_MAX_SCALE, Phase

__all__ = [
    "KINDS",
    "MACHINE_STOPPED",
    "ProviderSpec",
    "ProviderView",
    "configure",
    "detach",
    "docker_engines",
    "get_view",
    "list_views",
    "provision",
    "retire",
]

Kind = Literal["process", "docker"]
KINDS: Final = ("process", "docker")
# The 401 code a stopped machine's agent hears (its token retired with the machine).
MACHINE_STOPPED: Final = "machine_stopped"
MAX_MACHINES_PER_TYPE: Final = 1000
MAX_GRACE_S: Final = 7 * 24 * 3600
MAX_SLOTS: Final = 256


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    kind: str
    min_scale: int = 0
    max_scale: int = DEFAULT_MAX_SCALE
    grace_period_s: int = DEFAULT_GRACE_S
    slots: int = 1
    engine_url: str | None = None  # docker
    image: str | None = None  # docker
    network: str | None = None  # docker: the containers' network (default: host)
    flows_dir: str | None = None  # process: where path deployments' code is


@dataclass(frozen=True, slots=True)
class MachineState:
    id: uuid.UUID
    name: str
    phase: str
    started_at: datetime
    idle_since: datetime | None
    online: bool
    running_jobs: int


@dataclass(frozen=True, slots=True)
class ProviderView:
    provider: CapacityProvider
    machines: list[MachineState]


def docker_engines(settings: Settings) -> list[str]:
    return [u.strip().rstrip("/") for u in settings.elastic_docker_engines.split(",") if u.strip()]


def _validate(spec: ProviderSpec, settings: Settings) -> dict[str, Any]:
    """The spec checked against the bounds and the operator's settings; its config."""
    if spec.kind not in KINDS:
        raise Invalid(
            f"Unknown provider '{spec.kind}'; use one of: {', '.join(KINDS)}.", field="provider"
        )
    if not 1 <= spec.max_scale <= MAX_MACHINES_PER_TYPE:
        raise Invalid(
            f"max_scale must be between 1 and {MAX_MACHINES_PER_TYPE} machines.",
            field="max_scale",
        )
    if not 0 <= spec.min_scale <= spec.max_scale:
        raise Invalid(
            f"min_scale must be between 0 and max_scale ({spec.max_scale}).", field="min_scale"
        )
    if not 0 <= spec.grace_period_s <= MAX_GRACE_S:
        raise Invalid(
            f"grace_period_s must be between 0 and {MAX_GRACE_S} seconds (7 days).",
            field="grace_period_s",
        )
    if not 1 <= spec.slots <= MAX_SLOTS:
        raise Invalid(f"slots must be between 1 and {MAX_SLOTS}.", field="slots")
    if spec.kind == "process":
        if not settings.elastic_process_enabled:
            raise Invalid(
                "The process provider runs agents on the control plane's host, which this "
                "server's operator has not allowed (CSHARE_ELASTIC_PROCESS_ENABLED).",
                field="provider",
                code="provider_not_allowed",
            )
        if spec.engine_url or spec.image or spec.network:
            raise Invalid(
                "engine_url, image and network are for the docker provider.", field="provider"
            )
        if spec.flows_dir is not None and (
            not spec.flows_dir.startswith("/") or len(spec.flows_dir) > 4096
        ):
            raise Invalid("flows_dir must be an absolute path.", field="flows_dir")
        return {"flows_dir": spec.flows_dir} if spec.flows_dir else {}
    # docker
    allowed = docker_engines(settings)
    url = (spec.engine_url or "").strip().rstrip("/")
    if not url:
        raise Invalid("The docker provider needs engine_url.", field="engine_url")
    if url not in allowed:
        listed = ", ".join(allowed) if allowed else "none"
        raise Invalid(
            f"Docker engine '{url}' is not one this server's operator allows "
            f"(CSHARE_ELASTIC_DOCKER_ENGINES: {listed}).",
            field="engine_url",
            code="provider_not_allowed",
        )
    image = (spec.image or "").strip()
    if not image or len(image) > 300 or any(c.isspace() for c in image):
        raise Invalid(
            "The docker provider needs image: an agent image reference (no spaces).",
            field="image",
        )
    network = (spec.network or "host").strip()
    if not network or len(network) > 64:
        raise Invalid("network must be a Docker network name.", field="network")
    if spec.flows_dir is not None:
        raise Invalid("flows_dir is for the process provider.", field="flows_dir")
    return {"engine_url": url, "image": image, "network": network}


def _snapshot(p: CapacityProvider) -> dict[str, Any]:
    return {
        "machine_type": p.machine_type,
        "provider": p.kind,
        "min_scale": p.min_scale,
        "max_scale": p.max_scale,
        "grace_period_s": p.grace_period_s,
        "slots": p.slots,
        **p.config,
    }


def _known_type(org: Organization, machine_type: str) -> None:
    types = settings_doc.load(org.settings).limits.machine_types
    if machine_type not in types:
        known = ", ".join(sorted(types))
        raise NotFound(
            f"Machine type '{machine_type}' is not offered by this organization (known: "
            f"{known}); an admin adds types under machine_types in the limits.",
            code="machine_type_not_found",
        )


def _find(session: Session, org_id: uuid.UUID, machine_type: str) -> CapacityProvider | None:
    return session.scalars(
        select(CapacityProvider).where(
            CapacityProvider.org_id == org_id, CapacityProvider.machine_type == machine_type
        )
    ).first()


def configure(
    ctx: OrgContext, session: Session, settings: Settings, machine_type: str, spec: ProviderSpec
) -> tuple[CapacityProvider, bool]:
    """Attach a provider to the type, or change it; (provider, created). Admins."""
    ctx.require(Permission.settings_update)
    _known_type(ctx.org, machine_type)
    config = _validate(spec, settings)
    session.refresh(ctx.org, with_for_update=True)
    provider = _find(session, ctx.org.id, machine_type)
    created = provider is None
    before = None if provider is None or provider.detached else _snapshot(provider)
    if provider is None:
        provider = CapacityProvider(org_id=ctx.org.id, machine_type=machine_type)
        session.add(provider)
    elif provider.kind != spec.kind and not provider.detached:
        running = session.scalar(
            select(ProvisionedMachine.machine_id)
            .where(ProvisionedMachine.provider_id == provider.id)
            .limit(1)
        )
        if running is not None:
            raise Conflict(
                f"Machine type '{machine_type}' still has machines of its {provider.kind} "
                "provider; detach it (they drain and stop) before choosing another kind.",
                code="provider_in_use",
            )
    provider.kind = spec.kind
    provider.config = config
    provider.min_scale = spec.min_scale
    provider.max_scale = spec.max_scale
    provider.grace_period_s = spec.grace_period_s
    provider.slots = spec.slots
    provider.owner_id = ctx.user.id
    provider.detached = False
    provider.updated_at = utcnow()
    session.flush()
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="machine_type.scaling_set",
        target_type="machine_type",
        target_id=machine_type,
        before=before,
        after=_snapshot(provider),
    )
    session.commit()
    return provider, created


def detach(ctx: OrgContext, session: Session, machine_type: str) -> CapacityProvider:
    """Detach the type's provider: its machines drain and stop, then it is gone."""
    ctx.require(Permission.settings_update)
    session.refresh(ctx.org, with_for_update=True)
    provider = _find(session, ctx.org.id, machine_type)
    if provider is None or provider.detached:
        raise NotFound(
            f"Machine type '{machine_type}' has no capacity provider.", code="provider_not_found"
        )
    provider.detached = True
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="machine_type.scaling_removed",
        target_type="machine_type",
        target_id=machine_type,
        before=_snapshot(provider),
    )
    session.commit()
    return provider


def _view(session: Session, org: Organization, provider: CapacityProvider) -> ProviderView:
    offline_after = settings_doc.load(org.settings).machines.offline_after_s
    now = utcnow()
    rows = session.execute(
        select(ProvisionedMachine, Machine)
        .outerjoin(Machine, Machine.id == ProvisionedMachine.machine_id)
        .where(ProvisionedMachine.provider_id == provider.id)
        .order_by(ProvisionedMachine.started_at, ProvisionedMachine.name)
    ).all()
    machines = [
        MachineState(
            id=p.machine_id,
            name=p.name,
            phase=p.phase,
            started_at=p.started_at,
            idle_since=p.idle_since,
            online=m is not None and health_of(m, offline_after, now).value == "online",
            running_jobs=m.running_jobs if m is not None else 0,
        )
        for p, m in rows
    ]
    return ProviderView(provider, machines)


def list_views(session: Session, ctx: OrgContext) -> list[ProviderView]:
    ctx.require(Permission.overview_view)
    providers = session.scalars(
        select(CapacityProvider)
        .where(CapacityProvider.org_id == ctx.org.id)
        .order_by(CapacityProvider.machine_type)
    ).all()
    return [_view(session, ctx.org, p) for p in providers]


def get_view(session: Session, ctx: OrgContext, machine_type: str) -> ProviderView:
    ctx.require(Permission.overview_view)
    _known_type(ctx.org, machine_type)
    provider = _find(session, ctx.org.id, machine_type)
    if provider is None:
        raise NotFound(
            f"Machine type '{machine_type}' has no capacity provider.", code="provider_not_found"
        )
    return _view(session, ctx.org, provider)


# ---------------------------------------------------------- the scaler's side (no ctx)


@dataclass(frozen=True, slots=True)
class Provisioned:
    record: ProvisionedMachine
    machine: Machine
    token: str  # the machine token, shown once: to the launcher


def provision(
    session: Session, provider: CapacityProvider, org: Organization, *, why: str
) -> Provisioned:
    """A new machine of the provider: approved, owned by the provider's admin, with its
    own token; recorded `starting` with an audit event. No commit (the caller launches
    it after the commit, then stores the handle)."""
    owner = session.get(User, provider.owner_id) if provider.owner_id else None
    role = (
        session.scalar(
            select(Membership.role).where(
                Membership.org_id == org.id, Membership.user_id == owner.id
            )
        )
        if owner is not None
        else None
    )
    if owner is None or role is None or not allows(Role(role), Permission.settings_update):
        # Its machines would run on the authority of someone who no longer has it.
        raise Conflict(
            f"The admin who configured the capacity provider of '{provider.machine_type}' "
            "is no longer an admin of the organization; an admin must configure it again.",
            code="provider_owner_gone",
        )
    name = f"{provider.machine_type}-{provider.kind}-{uuid.uuid4().hex[:8]}"
    token = security.new_token("machine")
    now = utcnow()
    machine = Machine(
        org_id=org.id,
        owner_id=owner.id,
        name=name,
        machine_type=provider.machine_type,
        hardware={"provider": provider.kind},
        slots=provider.slots,
        status=MachineStatus.approved.value,
        status_reason="",
        token_hash=security.hash_token(token),
        decided_by=owner.id,
        decided_at=now,
    )
    session.add(machine)
    session.flush()
    record = ProvisionedMachine(
        machine_id=machine.id,
        provider_id=provider.id,
        org_id=org.id,
        name=name,
        phase=Phase.starting.value,
        handle={},
        started_at=now,
        ever_online=False,
    )
    session.add(record)
    audit.record(
        session,
        org_id=org.id,
        actor=None,
        action="machine.scaled_up",
        target_type="machine",
        target_id=machine.id,
        after={
            "name": name,
            "machine_type": provider.machine_type,
            "provider": provider.kind,
            "slots": provider.slots,
            "reason": why,
        },
    )
    return Provisioned(record, machine, token)


def retire(
    session: Session,
    record: ProvisionedMachine,
    *,
    action: Literal["machine.scaled_down", "machine.replaced"],
    rule: str,
    reason: str,
) -> None:
    """Forget a stopped (or crashed) machine: its token retired, its row and record
    gone, an audit event. No commit."""
    machine = session.get(Machine, record.machine_id)
    org = session.get(Organization, record.org_id)
    if machine is not None:
        _revoked(session, machine, reason)
        _retire(
            session,
            machine,
            MACHINE_STOPPED,
            f"Machine '{machine.name}' was stopped by its capacity provider: {reason}",
        )
        session.delete(machine)
    session.delete(record)
    if org is not None:
        audit.record(
            session,
            org_id=org.id,
            actor=None,
            action=action,
            target_type="machine",
            target_id=record.machine_id,
            before={"name": record.name, "phase": record.phase},
            after={"rule": rule, "reason": reason},
        )


SCALING_ACTIONS: Final = (
    "machine.scaled_up",
    "machine.draining",
    "machine.scaled_down",
    "machine.replaced",
)


@dataclass(frozen=True, slots=True)
class ScalingEvent:
    at: datetime
    action: str
    machine_id: str
    name: str
    reason: str


def recent_events(session: Session, org_id: uuid.UUID, limit: int = 20) -> list[ScalingEvent]:
    """The latest starts, drains, stops and replacements of the org's providers (audit)."""
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.org_id == org_id, AuditEvent.action.in_(SCALING_ACTIONS))
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    ).all()
    return [
        ScalingEvent(
            at=e.created_at,
            action=e.action,
            machine_id=e.target_id,
            name=str((e.after or {}).get("name") or (e.before or {}).get("name") or ""),
            reason=str((e.after or {}).get("reason") or ""),
        )
        for e in rows
    ]
