"""Who is acting inside which organization, and the one permission guard.

Non-members never learn an organization exists (404); members whose role lacks a
permission get 403 with the policy's sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from orgs import two_factor
from orgs.models import ApiToken, Membership, Organization, User
from policies.access import Viewer
from policies.errors import Forbidden, NotFound
from policies.permissions import Permission, Role, allows, denial
from policies.sso import sso_denial
from policies.two_factor import blocked_sentence, blocks_member, org_requires_two_factor


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
    as_job: bool = False,
    token: ApiToken | None = None,
) -> OrgContext:
    """The member `user` of org `slug` (404 for anyone else).

    The one place an org's sign-in rules are enforced for people: a member without
    two-factor gets 403 `two_factor_required` where `security.require_2fa` is on;
    `token` (the person's session or personal token this request came with) is checked
    against `sso.required` (403 `sso_required`). `as_job`: the user's running job
    acting through its own credential, which neither setting stops (jobs pass no token).
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
    requires = not as_job and org_requires_two_factor(org.settings or {})
    # Only then the extra query: most orgs never ask, and this runs on every request.
    if requires and blocks_member(
        org_requires=requires, enrolled=two_factor.is_enrolled(session, user.id)
    ):
        raise Forbidden(blocked_sentence(org.name), code="two_factor_required")
    via = token.sso_provider if token is not None else None
    if token is not None and not as_job:
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
