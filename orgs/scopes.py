"""A `policies.access.Scope` as a SQL WHERE clause: the one translation every list uses
(jobs, machines, datasets), so what a viewer may list is decided in policies/ only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false

from policies.access import Scope


def scope_clause(
    scope: Scope, org_column: Any, org_id: Any, own: ColumnElement[bool]
) -> ColumnElement[bool]:
    """ALL: the org's rows; OWN: the org's rows matching `own`; NONE: nothing."""
    if scope is Scope.ALL:
        return org_column == org_id  # type: ignore[no-any-return]
    if scope is Scope.OWN:
        return and_(org_column == org_id, own)
    return false()
