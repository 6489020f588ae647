"""Human labels and help for the limits document's keys on the settings page.

The keys stay visible (small, beside the label) because the YAML editor, the CLI and
the API use them; the label and help say what each one does."""

from __future__ import annotations

from typing import Final

# key -> (label, help)
LIMIT_LABELS: Final[dict[str, tuple[str, str]]] = {
    "max_machines_per_user": (
        "Machines per member",
        "How many machines one member may register in this organization.",
    ),
    "max_concurrent_jobs_per_user": (
        "Running jobs per member",
        "Jobs of one member running at once; more are held in their queue until one ends.",
    ),
    "max_queued_jobs_per_user": (
        "Queued jobs per member",
        "Held jobs one member may have waiting; a submission beyond it is refused (429).",
    ),
    "max_job_runtime": (
        "Longest job runtime (seconds)",
        "A job asking for more is refused; a job asking for nothing gets this much.",
    ),
    "max_job_memory": (
        "Most memory per job (MB)",
        "A job asking for more is refused; a job asking for nothing gets this much.",
    ),
}

TYPE_LABELS: Final[dict[str, tuple[str, str]]] = {
    "max_scale": ("Running at once, organization", "Jobs of this type running at once in all."),
    "per_user_quota": ("Running at once, per member", "Jobs of this type one member may run."),
}


def label(key: str) -> str:
    return (LIMIT_LABELS.get(key) or TYPE_LABELS.get(key) or (key.replace("_", " ").capitalize(),))[
        0
    ]


def help_for(key: str) -> str:
    found = LIMIT_LABELS.get(key) or TYPE_LABELS.get(key)
    return found[1] if found else ""
