"""Who may open the Prefect UI that Compute Share serves, and what an operator's UI may
call through the proxy. Pure: no database, no network.

- **Instance operators** (`CSHARE_OPERATORS`: e-mails or user names) open the whole
  instance at `/prefect/admin/`; their UI calls `/prefect/api` with their console
  session and reaches every Prefect endpoint except `OPERATOR_DENIED`.
- **An organization's owners and admins** (those who see all of its jobs,
  `policies.access.job_view_scope` is ALL) open `/prefect/<org>/`; their UI calls
  `/prefect/<org>/api` and gets exactly what their token would (`policies.prefect_rules`,
  principal `admin`).
- **Members** get 403 (`ui_admins_only`): the console's Jobs page is theirs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from policies.access import Scope, Viewer, job_view_scope
from policies.prefect_rules import Decision

__all__ = [
    "OPERATOR_DENIED",
    "OPERATOR_UI",
    "is_operator",
    "operator_call",
    "operator_only",
    "org_ui_access",
    "parse_operators",
]

# The operator UI's path segment: a reserved organization slug, so never an org's UI.
OPERATOR_UI: Final = "admin"

# (method or "*", path pattern, rule, reason): what even an operator's UI may not do.
OPERATOR_DENIED: Final[tuple[tuple[str, str, str, str], ...]] = (
    (
        "*",
        r"/admin/database(/.*)?",
        "operator_database",
        "Prefect's database is not cleared or dropped from the UI.",
    ),
    (
        "POST",
        r"/deployments/[^/]+/create_flow_run(/bulk)?",
        "operator_submit",
        "Runs are submitted by a member of the organization (the console, `cshare jobs "
        "submit`, or /prefect/<org>/): a run made here would not be admitted, and the "
        "claim gate would cancel it.",
    ),
    (
        "POST",
        r"/flow_runs/?",
        "operator_submit",
        "Flow runs are not created behind admission: the claim gate would cancel them.",
    ),
)
_DENIED: Final = tuple(
    (method, re.compile(f"^{pattern}/?$"), rule, reason)
    for method, pattern, rule, reason in OPERATOR_DENIED
)


def parse_operators(value: str) -> frozenset[str]:
    """`CSHARE_OPERATORS` ("ops@example.org, alice") as lower-cased entries."""
    return frozenset(p.strip().lower() for p in value.split(",") if p.strip())


def is_operator(operators: Iterable[str], *, email: str, name: str) -> bool:
    """An entry names the account by e-mail (any case) or by user name."""
    listed = frozenset(operators)
    return email.strip().lower() in listed or name.strip().lower() in listed


def org_ui_access(viewer: Viewer) -> Decision:
    """May this member open their organization's Prefect UI (and call its API with the
    console session)?"""
    if job_view_scope(viewer) is Scope.ALL:
        return Decision(True, "ui_admins_only", "")
    return Decision(
        False,
        "ui_admins_only",
        "The Prefect UI is for the organization's owners and admins; your jobs, their "
        "logs and cancel are on the console's Jobs page.",
    )


def operator_call(method: str, path: str) -> Decision:
    """May an operator's UI make this Prefect call (path relative to the API root)?"""
    for denied_method, pattern, rule, reason in _DENIED:
        if denied_method in ("*", method.upper()) and pattern.match(path):
            return Decision(False, rule, reason)
    return Decision(True, "operator_all", "")


def operator_only() -> Decision:
    return Decision(
        False,
        "ui_operators_only",
        "The instance-wide Prefect UI is for instance operators (CSHARE_OPERATORS); "
        "owners and admins open /prefect/<org>/.",
    )
