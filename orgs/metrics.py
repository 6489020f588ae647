"""Process-wide Prometheus instruments that code below `api/` records into.

`flows/` and `orgs/` may not import `api/` (imports only point down), yet the job and
dispatch code is where submissions are decided and runs released. So the instruments
live here, in a registry of their own, and `api.metrics` renders this registry together
with the gauges it computes from the database at scrape time.

Labels are bounded on purpose: the decision (3 values) and the admission rule (the
policy's fixed rule names, anything else folds into "other"). Never a user or a job id:
each label value is a time series kept forever by Prometheus. Organizations appear only
in the scrape-time gauges of `api.metrics`, and only the busiest `metrics_top_orgs` of
them by name (`org_labels`); the rest share "other".

Counters are per process. With several API replicas Prometheus scrapes each one and
`sum()` across instances gives the totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from policies.admission import HOLD_RULES, REJECT_RULES, RULE_NAMES, Decision

REGISTRY: Final = CollectorRegistry(auto_describe=True)

# decide()'s kinds -> the words an operator reads on a dashboard.
_DECISIONS: Final[dict[str, str]] = {
    "accept": "accepted",
    "accepted": "accepted",
    "hold": "held",
    "held": "held",
    "reject": "rejected",
    "rejected": "rejected",
}
_RULES: Final[frozenset[str]] = frozenset(RULE_NAMES)

SUBMISSIONS: Final = Counter(
    "cshare_job_submissions",
    "Job submissions decided by the admission policy, by decision and deciding rule "
    "(rule is 'none' for accepted submissions).",
    ["decision", "rule"],
    registry=REGISTRY,
)

DISPATCH_LATENCY: Final = Histogram(
    "cshare_dispatch_latency_seconds",
    "Time from a job's admission to the release of its flow run to workers "
    "(0 for a job admitted straight to Scheduled; the wait in the held queue otherwise).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600),
    registry=REGISTRY,
)

NOTIFICATION_DELIVERIES: Final = Counter(
    "cshare_notification_deliveries",
    "Webhook delivery attempts by result (delivered, retry, failed = gave up).",
    ["result"],
    registry=REGISTRY,
)

JOBS_ENDED: Final = Counter(
    "cshare_jobs_ended",
    "Jobs that reached a terminal state, by state and machine type.",
    ["state", "machine_type"],
    registry=REGISTRY,
)

JOB_COMPUTE_SECONDS: Final = Counter(
    "cshare_job_compute_seconds",
    "Wall-clock seconds of jobs that ran on a machine, counted when they end.",
    ["machine_type"],
    registry=REGISTRY,
)

# Pre-create the series a dashboard expects so they read 0, not "no data", at start.
SUBMISSIONS.labels(decision="accepted", rule="none")
for _rule in HOLD_RULES:
    SUBMISSIONS.labels(decision="held", rule=_rule.name)
for _rule in REJECT_RULES:
    SUBMISSIONS.labels(decision="rejected", rule=_rule.name)
for _result in ("delivered", "retry", "failed"):
    NOTIFICATION_DELIVERIES.labels(result=_result)


def record_submission(decision_kind: str, rule: str | None = None) -> None:
    """Count one admission decision of a submission.

    `decision_kind` is a `policies.admission` decision's `kind` ("accept", "hold",
    "reject"; "accepted"/"held"/"rejected" work too); `rule` is the deciding rule's name
    for hold and reject. Call it once per submission, after the transaction that stored
    the decision committed, not for explain dry-runs or dispatcher re-checks.
    """
    decision = _DECISIONS.get(decision_kind)
    if decision is None:
        raise ValueError(f"unknown decision kind {decision_kind!r}")
    label = "none" if decision == "accepted" else (rule if rule in _RULES else "other")
    SUBMISSIONS.labels(decision=decision, rule=label).inc()


def record_decision(decision: Decision) -> None:
    """`record_submission` for a `policies.admission` decision object."""
    record_submission(decision.kind, getattr(decision, "rule", None))


def record_job_end(state: str, machine_type: str, ran_seconds: float | None) -> None:
    JOBS_ENDED.labels(state=state, machine_type=machine_type).inc()
    if ran_seconds is not None and ran_seconds > 0:
        JOB_COMPUTE_SECONDS.labels(machine_type=machine_type).inc(ran_seconds)


def observe_dispatch_latency(seconds: float) -> None:
    """Record how long a job waited between admission and release (seconds, >= 0)."""
    DISPATCH_LATENCY.observe(max(0.0, seconds))


def record_notification(result: str) -> None:
    NOTIFICATION_DELIVERIES.labels(result=result).inc()


OTHER_ORGS: Final = "other"


def org_labels(activity: Mapping[str, int], top: int) -> dict[str, str]:
    """Each org slug -> the `org` label its series carry: its own slug for the `top`
    busiest (most activity, then slug order: stable between scrapes while nothing
    changes), "other" for the rest. An org literally named "other" would be
    indistinguishable from the fold, so it is folded too."""
    ranked = sorted((s for s in activity if s != OTHER_ORGS), key=lambda s: (-activity[s], s))
    named = set(ranked[: max(0, top)])
    return {slug: slug if slug in named else OTHER_ORGS for slug in activity}
