"""Who is acting inside which organization, and the one permission guard.

Non-members never learn an organization exists (404); members whose role lacks a
permission get 403 with the policy's sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from orgs.models import ApiToken, Membership, Organization, User
from policies.access import Viewer
from policies.errors import Forbidden, NotFound
from policies.permissions import Permission, Role, allows, denial
from policies.sso import sso_denial


@dataclass(frozen=True, slots=True)
class OrgContext:
    user: User
    org: Organization
    membership: Membership
    # The provider the caller's session signed in through (orgs.sso); None: a password
    # session, or a caller that is no person's session (a job acting for its user).
    signed_in_via: str | None = None

    @property
    def role(self) -> Role:
        return Role(self.membership.role)

    @property
    def viewer(self) -> Viewer:
        """The snapshot `policies.access` decides on."""
        return Viewer(user_id=self.user.id, org_id=self.org.id, role=self.role)

    def can(self, permission: Permission) -> bool:
        return allows(self.role, permission)

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise Forbidden(denial(permission), code="forbidden")

    def require_own_or(self, owner_id: object, permission: Permission) -> None:
        """Allow the resource's owner; everyone else needs `permission` (e.g. manage-all)."""
        if owner_id != self.user.id:
            self.require(permission)


def org_not_found(slug: str) -> NotFound:
    return NotFound(f"No organization '{slug}' that you are a member of.", code="org_not_found")


def member_context(
    session: Session,
    slug: str,
    user: User,
    *,
    lock: bool = False,
    token: ApiToken | None = None,
) -> OrgContext:
    """The caller inside the org; 404 for non-members.

    `token`: the person's session or personal token this request came with. Its sign-in
    is checked against the org's `sso.required` (403 `sso_required`). Callers acting
    for a job (whose submission passed this check) pass none.
    """
    stmt = (
        select(Organization, Membership)
        .join(Membership, Membership.org_id == Organization.id)
        .where(Organization.slug == slug, Membership.user_id == user.id)
    )
    if lock:
        stmt = stmt.with_for_update(of=Organization)
    row = session.execute(stmt).first()
    if row is None:
        raise org_not_found(slug)
    org, membership = row
    via = token.sso_provider if token is not None else None
    if token is not None:
        sso = (org.settings or {}).get("sso") or {}
        refused = sso_denial(
            required=bool(sso.get("required")),
            provider=sso.get("provider"),
            provider_label=str(sso.get("provider")),
            signed_in_via=via,
        )
        if refused is not None:
            raise Forbidden(refused, code="sso_required")
    return OrgContext(user=user, org=org, membership=membership, signed_in_via=via)
