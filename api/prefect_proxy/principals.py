"""Who is calling the Prefect proxy: the Compute Share credential behind the request.

Prefect clients send `Authorization: Bearer <key>` when PREFECT_API_KEY is set and
`Authorization: Basic base64(<auth string>)` when PREFECT_API_AUTH_STRING is; websocket
clients send the auth string in their first message. All three carry our credential
here, never Prefect's secret: a machine token (`cs_m_`), a job token (`cs_j_`), or a
person's session or personal token (`cs_s_`, `cs_p_`), the last only on an
organization's path `/prefect/<org>/api`.
"""

from __future__ import annotations

import base64
import binascii

from sqlalchemy import select
from sqlalchemy.orm import Session

from flows import job_tokens
from flows.gateway import work_pool_name
from orgs import accounts, security
from orgs import machines as registry
from orgs.context import member_context
from orgs.models import ApiToken, Membership, Organization, User
from policies.access import Scope, job_view_scope
from policies.errors import Forbidden, Unauthenticated
from policies.prefect_rules import Actor, Principal


def credential_from_header(value: str | None) -> str | None:
    """The credential in an Authorization header (Bearer or Basic), or None."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return rest or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        # `user:password` auth strings: our tokens contain no ':', the secret is last.
        return decoded.rsplit(":", 1)[-1] or None
    return None


def _org(session: Session, org_id: object) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise Unauthenticated("The credential's organization no longer exists.", code="bad_token")
    return org


def _same_org(org: Organization, slug: str | None) -> None:
    if slug is not None and slug != org.slug:
        raise Forbidden(
            "A machine or job credential works only for its own organization (rule: own_org_only).",
            code="own_org_only",
        )


def authenticate(session: Session, credential: str | None, org_slug: str | None) -> Actor:
    """The actor behind `credential`; 401 for none or a bad one, 403/404 for a valid one
    used where it does not belong."""
    if not credential:
        raise Unauthenticated(
            "Send your Compute Share credential as PREFECT_API_KEY (or PREFECT_API_AUTH_STRING).",
            code="unauthenticated",
        )
    if credential.startswith(security.TOKEN_KINDS["machine"] + "_"):
        machine = registry.authenticate(session, credential)
        if machine.status != registry.MachineStatus.approved:
            raise Forbidden(
                f"Machine '{machine.name}' is not approved (rule: machine_approved).",
                code="machine_approved",
            )
        org = _org(session, machine.org_id)
        _same_org(org, org_slug)
        return Actor(
            Principal.machine,
            org.id,
            user_id=machine.owner_id,
            machine_id=machine.id,
            machine_type=machine.machine_type,
            pool=work_pool_name(org.slug, machine.machine_type),
        )
    if job_tokens.is_job_token(credential):
        # Live only while its job is: the ledger revokes it at the job's end.
        job = job_tokens.job_for_token(session, credential)
        if job is None:
            raise Unauthenticated(
                "The job token is unknown, expired, or its job has ended.", code="bad_token"
            )
        member = session.scalar(
            select(Membership.id).where(
                Membership.org_id == job.org_id, Membership.user_id == job.user_id
            )
        )
        if member is None:
            raise Unauthenticated("The job's submitter left the organization.", code="bad_token")
        _same_org(_org(session, job.org_id), org_slug)
        return Actor(Principal.job, job.org_id, user_id=job.user_id, job_id=job.id)
    user, token = accounts.authenticate(session, credential)
    if org_slug is None:
        raise Forbidden(
            "People's tokens work on an organization's path: set PREFECT_API_URL to "
            "<server>/prefect/<org>/api (rule: member_org_path).",
            code="member_org_path",
        )
    return person_actor(session, user, org_slug, token=token)


def person_actor(
    session: Session, user: User, org_slug: str, *, token: ApiToken | None = None
) -> Actor:
    """A person inside one organization (404 when they are no member of it)."""
    ctx = member_context(session, org_slug, user, token=token)
    viewer = ctx.viewer
    principal = Principal.admin if job_view_scope(viewer) is Scope.ALL else Principal.member
    return Actor(principal, ctx.org.id, user_id=user.id, viewer=viewer)
