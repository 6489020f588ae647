"""Admission: may this job run now, wait for a slot, or never run?

An ordered list of small named rules over a frozen snapshot (role, limits, request,
usage), in the spirit of Prefect's orchestration rules. Reject rules run first (the job
can never run as asked: no point queueing it), then hold rules (the job is fine but must
wait for a slot). The first failing rule decides; if none fails the job is accepted with
its effective resources (an omitted memory or runtime becomes the organization maximum).

One decision serves every caller:

- submit and ``--explain`` dry runs: ``for_release=False``;
- the dispatcher releasing a held job, and a worker claiming a run: ``for_release=True``
  when the job is already in our ledger (it was admitted once). ``queue_within_limit``
  is then skipped: the job is already counted in the queue, and lowering the queue limit
  must not reject jobs that were accepted under the old one. A run the control plane
  never admitted (created in the Prefect UI, by a schedule) is claimed with
  ``for_release=False``, exactly like a submission.

Usage counts never include the job being decided. On submit it does not exist yet; on
release or claim the caller leaves it out of its counts (``Job.id != :id`` in the
query) or uses ``UserUsage.without_job`` / ``OrgUsage.without_job``. Otherwise a user at
exactly their limit would be held by their own job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final, Literal, NamedTuple, TypeAlias

from policies.limits import LimitsDocument
from policies.permissions import Permission, Role, allows, denial

__all__ = [
    "HOLD_RULES",
    "POLICY",
    "REJECT_RULES",
    "RULE_NAMES",
    "Accept",
    "AdmissionSnapshot",
    "Decision",
    "Effect",
    "Hold",
    "JobRequest",
    "OrgUsage",
    "Reject",
    "Resources",
    "Rule",
    "RuleOutcome",
    "Status",
    "TeamUsage",
    "UserUsage",
    "decide",
    "effective_resources",
    "explain",
]

Effect: TypeAlias = Literal["reject", "hold"]
Status: TypeAlias = Literal["pass", "fail", "skip"]


# ------------------------------------------------------------------- snapshots


def _frozen(counts: Mapping[str, int]) -> Mapping[str, int]:
    # A private read-only copy: the caller's dict may change after the snapshot is taken.
    return MappingProxyType(dict(counts))


def _minus_one(counts: Mapping[str, int], key: str) -> dict[str, int]:
    out = dict(counts)
    out[key] = max(0, out.get(key, 0) - 1)
    return out


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What the job asks for, plus the facts the rules need that come from elsewhere.

    ``memory_mb`` / ``max_runtime_s`` of None mean "the organization maximum".
    ``deployment_known``: the deployment exists in this organization.
    ``inputs_readable``: the submitter may read every input dataset.
    ``deployment_limit``: the deployment's ``concurrency_limit`` (None: none), with its
    ``collision_strategy`` (``enqueue``: hold beyond it; ``cancel_new``: reject).
    """

    machine_type: str
    memory_mb: int | None = None
    max_runtime_s: int | None = None
    deployment_known: bool = True
    inputs_readable: bool = True
    deployment_limit: int | None = None
    collision_strategy: Literal["enqueue", "cancel_new"] = "enqueue"


@dataclass(frozen=True, slots=True)
class UserUsage:
    """The submitter's jobs. ``running``: active jobs holding a slot (scheduled or running);
    ``queued``: held jobs; ``running_by_type``: active jobs per machine type."""

    running: int = 0
    queued: int = 0
    running_by_type: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "running_by_type", _frozen(self.running_by_type))

    def without_job(self, machine_type: str, *, active: bool) -> UserUsage:
        """These counts minus one job: an active one (slot holder) or a held one."""
        if active:
            return UserUsage(
                running=max(0, self.running - 1),
                queued=self.queued,
                running_by_type=_minus_one(self.running_by_type, machine_type),
            )
        return UserUsage(self.running, max(0, self.queued - 1), self.running_by_type)


@dataclass(frozen=True, slots=True)
class OrgUsage:
    """Active jobs of all users per machine type (for ``max_scale``)."""

    running_by_type: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "running_by_type", _frozen(self.running_by_type))

    def without_job(self, machine_type: str) -> OrgUsage:
        """These counts minus one active job (held jobs are not counted here)."""
        return OrgUsage(_minus_one(self.running_by_type, machine_type))


@dataclass(frozen=True, slots=True)
class TeamUsage:
    """One of the submitter's teams that carries limits (orgs.teams): its cap on its
    members' active jobs combined (None: none) with their ``running`` count now, and the
    machine types it allows (None: any). Every team's limits apply: they stack on top of
    the submitter's own, as the org's do."""

    name: str
    max_concurrent_jobs: int | None = None
    machine_types: tuple[str, ...] | None = None
    running: int = 0

    def without_job(self) -> TeamUsage:
        return TeamUsage(
            self.name, self.max_concurrent_jobs, self.machine_types, max(0, self.running - 1)
        )


@dataclass(frozen=True, slots=True)
class AdmissionSnapshot:
    """Everything a decision looks at. ``role`` None: the submitter is not (or no longer)
    a member. ``for_release``: the job was admitted before (see the module docstring).
    ``deployment_running``: the deployment's jobs holding a slot, everyone's."""

    role: Role | None
    limits: LimitsDocument
    request: JobRequest
    user: UserUsage = field(default_factory=UserUsage)
    org: OrgUsage = field(default_factory=OrgUsage)
    for_release: bool = False
    deployment_running: int = 0
    teams: tuple[TeamUsage, ...] = ()


# ------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Accept:
    """Run now, with these effective resources."""

    memory_mb: int
    max_runtime_s: int
    kind: ClassVar[Literal["accept"]] = "accept"


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep the job queued until a slot frees; ``reason`` says which limit is full."""

    rule: str
    reason: str
    kind: ClassVar[Literal["hold"]] = "hold"


@dataclass(frozen=True, slots=True)
class Reject:
    """Never run as asked. ``field`` names the request field at fault, if one is."""

    rule: str
    reason: str
    field: str | None = None
    kind: ClassVar[Literal["reject"]] = "reject"


Decision: TypeAlias = Accept | Hold | Reject


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """One line of ``explain``. ``skip``: the rule does not apply to this snapshot."""

    rule: str
    effect: Effect
    status: Status
    reason: str
    field: str | None = None

    @property
    def passed(self) -> bool:
        return self.status != "fail"


class Resources(NamedTuple):
    memory_mb: int
    max_runtime_s: int


def effective_resources(limits: LimitsDocument, request: JobRequest) -> Resources:
    """The resources a job gets: what it asked for, or the organization maximum.

    Meaningful only for a request the rules accept (or hold); a held job's effective
    resources are recomputed at release, against the limits of that moment.
    """
    return Resources(
        memory_mb=request.memory_mb
        if request.memory_mb is not None
        else limits.limits.max_job_memory,
        max_runtime_s=request.max_runtime_s
        if request.max_runtime_s is not None
        else limits.limits.max_job_runtime,
    )


# ----------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class _Check:
    status: Status
    reason: str
    field: str | None = None


def _pass(reason: str) -> _Check:
    return _Check("pass", reason)


def _fail(reason: str, field: str | None = None) -> _Check:
    return _Check("fail", reason, field)


@dataclass(frozen=True, slots=True)
class Rule:
    """A named check. ``on_release`` False: skipped for a job admitted before."""

    name: str
    effect: Effect
    check: Callable[[AdmissionSnapshot], _Check]
    on_release: bool = True

    def evaluate(self, snapshot: AdmissionSnapshot) -> RuleOutcome:
        if snapshot.for_release and not self.on_release:
            return RuleOutcome(
                self.name, self.effect, "skip", "Not checked for a job that is already queued."
            )
        c = self.check(snapshot)
        return RuleOutcome(self.name, self.effect, c.status, c.reason, c.field)


def _role_may_submit(s: AdmissionSnapshot) -> _Check:
    if s.role is None:
        return _fail("You are not a member of this organization.")
    if not allows(s.role, Permission.jobs_submit):
        return _fail(denial(Permission.jobs_submit))
    return _pass(f"Your role ({s.role.value}) may submit jobs.")


def _known_deployment(s: AdmissionSnapshot) -> _Check:
    if not s.request.deployment_known:
        return _fail("The deployment does not exist in this organization.", "deployment")
    return _pass("The deployment exists in this organization.")


def _dataset_access(s: AdmissionSnapshot) -> _Check:
    if not s.request.inputs_readable:
        return _fail("You may not read one or more of the job's input datasets.", "inputs")
    return _pass("You may read every input dataset.")


def _known_machine_type(s: AdmissionSnapshot) -> _Check:
    name, types = s.request.machine_type, s.limits.machine_types
    if name not in types:
        known = ", ".join(sorted(types))
        return _fail(
            f"Machine type '{name}' is not offered by this organization (known: {known}).",
            "machine_type",
        )
    return _pass(f"Machine type '{name}' is offered by this organization.")


def _within(
    asked: int | None, maximum: int, *, what: str, unit: str, key: str, field: str
) -> _Check:
    # Shared by the runtime and memory rules: None means "the maximum", which always fits.
    if asked is None:
        return _pass(f"No {what} requested: the job gets the maximum of {maximum} {unit}.")
    if asked < 1:
        return _fail(f"Requested {what} must be at least 1 {unit}, got {asked}.", field)
    if asked > maximum:
        return _fail(
            f"Requested {what} of {asked} {unit} exceeds the organization's maximum "
            f"of {maximum} {unit} ({key}).",
            field,
        )
    return _pass(f"Requested {what} of {asked} {unit} is within the maximum of {maximum} {unit}.")


def _runtime_within_limit(s: AdmissionSnapshot) -> _Check:
    return _within(
        s.request.max_runtime_s,
        s.limits.limits.max_job_runtime,
        what="runtime",
        unit="s",
        key="max_job_runtime",
        field="resources.max_runtime_s",
    )


def _memory_within_limit(s: AdmissionSnapshot) -> _Check:
    return _within(
        s.request.memory_mb,
        s.limits.limits.max_job_memory,
        what="memory",
        unit="MB",
        key="max_job_memory",
        field="resources.memory_mb",
    )


def _queue_within_limit(s: AdmissionSnapshot) -> _Check:
    have, cap = s.user.queued, s.limits.limits.max_queued_jobs_per_user
    if have >= cap:
        return _fail(f"You already have {have} of {cap} jobs queued (max_queued_jobs_per_user).")
    return _pass(f"You have {have} of {cap} jobs queued.")


def _user_concurrency(s: AdmissionSnapshot) -> _Check:
    have, cap = s.user.running, s.limits.limits.max_concurrent_jobs_per_user
    if have >= cap:
        return _fail(
            f"You have {have} of {cap} concurrent jobs running (max_concurrent_jobs_per_user)."
        )
    return _pass(f"You have {have} of {cap} concurrent jobs running.")


def _unknown_type(name: str) -> _Check:
    return _Check("skip", f"Machine type '{name}' is unknown (see known_machine_type).")


def _type_quota(s: AdmissionSnapshot) -> _Check:
    name = s.request.machine_type
    caps = s.limits.machine_types.get(name)
    if caps is None:
        return _unknown_type(name)
    have, cap = s.user.running_by_type.get(name, 0), caps.per_user_quota
    if have >= cap:
        return _fail(
            f"You have {have} of {cap} '{name}' jobs running (machine_types.{name}.per_user_quota)."
        )
    return _pass(f"You have {have} of {cap} '{name}' jobs running.")


def _type_scale(s: AdmissionSnapshot) -> _Check:
    name = s.request.machine_type
    caps = s.limits.machine_types.get(name)
    if caps is None:
        return _unknown_type(name)
    have, cap = s.org.running_by_type.get(name, 0), caps.max_scale
    if have >= cap:
        return _fail(
            f"The organization has {have} of {cap} '{name}' jobs running "
            f"(machine_types.{name}.max_scale)."
        )
    return _pass(f"The organization has {have} of {cap} '{name}' jobs running.")


def _team_machine_types(s: AdmissionSnapshot) -> _Check:
    name = s.request.machine_type
    limiting = [t for t in s.teams if t.machine_types is not None]
    if not limiting:
        return _Check("skip", "None of your teams limits machine types.")
    for team in limiting:
        if name not in (team.machine_types or ()):
            allowed = ", ".join(team.machine_types or ()) or "none"
            return _fail(
                f"Your team '{team.name}' may use only these machine types: {allowed} "
                f"(team {team.name}: machine_types); '{name}' is not one of them.",
                "machine_type",
            )
    return _pass(f"Your teams allow '{name}' machines.")


def _team_concurrency(s: AdmissionSnapshot) -> _Check:
    limiting = [t for t in s.teams if t.max_concurrent_jobs is not None]
    if not limiting:
        return _Check("skip", "None of your teams limits concurrent jobs.")
    for team in limiting:
        cap = team.max_concurrent_jobs or 0
        if team.running >= cap:
            return _fail(
                f"Your team '{team.name}' has {team.running} of {cap} concurrent jobs "
                f"running (team {team.name}: max_concurrent_jobs)."
            )
    return _pass(
        "; ".join(
            f"Team '{t.name}' has {t.running} of {t.max_concurrent_jobs} concurrent jobs running"
            for t in limiting
        )
        + "."
    )


def _deployment_running(s: AdmissionSnapshot) -> tuple[int, int] | None:
    cap = s.request.deployment_limit
    return None if cap is None else (s.deployment_running, cap)


def _deployment_busy(s: AdmissionSnapshot) -> _Check:
    counts = _deployment_running(s)
    if counts is None or s.request.collision_strategy != "cancel_new":
        return _Check("skip", "The deployment does not reject jobs beyond a limit.")
    have, cap = counts
    if have >= cap:
        return _fail(
            f"The deployment has {have} of {cap} jobs running and rejects new ones "
            "(concurrency_limit, collision_strategy cancel_new)."
        )
    return _pass(f"The deployment has {have} of {cap} jobs running.")


def _deployment_concurrency(s: AdmissionSnapshot) -> _Check:
    counts = _deployment_running(s)
    if counts is None:
        return _Check("skip", "The deployment has no concurrency limit.")
    have, cap = counts
    if have >= cap:
        return _fail(f"The deployment has {have} of {cap} jobs running (concurrency_limit).")
    return _pass(f"The deployment has {have} of {cap} jobs running.")


# The policy. Order matters: the first failing rule is the one reported, so who/what
# checks come before resource checks, and every reject rule before any hold rule.
REJECT_RULES: Final[tuple[Rule, ...]] = (
    Rule("role_may_submit", "reject", _role_may_submit),
    Rule("known_deployment", "reject", _known_deployment),
    Rule("dataset_access", "reject", _dataset_access),
    Rule("known_machine_type", "reject", _known_machine_type),
    Rule("team_machine_types", "reject", _team_machine_types),
    Rule("runtime_within_limit", "reject", _runtime_within_limit),
    Rule("memory_within_limit", "reject", _memory_within_limit),
    Rule("queue_within_limit", "reject", _queue_within_limit, on_release=False),
    # cancel_new: a job beyond the deployment's limit never queues (as in Prefect);
    # one already queued for another reason just waits for the slot.
    Rule("deployment_busy", "reject", _deployment_busy, on_release=False),
)
HOLD_RULES: Final[tuple[Rule, ...]] = (
    Rule("user_concurrency", "hold", _user_concurrency),
    Rule("team_concurrency", "hold", _team_concurrency),
    Rule("type_quota", "hold", _type_quota),
    Rule("type_scale", "hold", _type_scale),
    Rule("deployment_concurrency", "hold", _deployment_concurrency),
)
POLICY: Final[tuple[Rule, ...]] = REJECT_RULES + HOLD_RULES
RULE_NAMES: Final[tuple[str, ...]] = tuple(r.name for r in POLICY)


def decide(snapshot: AdmissionSnapshot) -> Decision:
    """The first failing rule of ``POLICY`` decides; otherwise accept."""
    for rule in POLICY:
        outcome = rule.evaluate(snapshot)
        if outcome.status != "fail":
            continue
        if rule.effect == "reject":
            return Reject(rule.name, outcome.reason, outcome.field)
        return Hold(rule.name, outcome.reason)
    memory_mb, max_runtime_s = effective_resources(snapshot.limits, snapshot.request)
    return Accept(memory_mb=memory_mb, max_runtime_s=max_runtime_s)


def explain(snapshot: AdmissionSnapshot) -> list[RuleOutcome]:
    """Every rule's outcome, in policy order (for ``--explain``); ``decide`` is the verdict."""
    return [rule.evaluate(snapshot) for rule in POLICY]
