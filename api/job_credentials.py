"""Job tokens at the API's edge: refused everywhere, except where a route says what for.

`refuse_job_tokens` runs before every API route (an app-wide dependency) and answers
403 `job_token_scope` to a job token (`cs_j_...`) unless the route depends on a
`JobAware(...)` (or `JobOnly(...)`) rule naming a `policies.access.JobTokenUse`. Those
rules are the explicit allow list: they resolve the token to its job's `Caller`, and the
services below narrow it further (its pinned inputs, its declared outputs, its own job).

`JobOnly` routes write a job's lineage (its metadata and run record): only the job's own
token may, members get 403 `lineage_job_only`, whatever their role.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.deps import Credentials, Requires, SessionDep, get_auth
from datasets.access import Caller
from flows.job_tokens import is_job_token, job_caller
from orgs.context import member_context
from policies import access
from policies.access import CredentialRule, JobTokenUse
from policies.errors import Unauthenticated
from policies.permissions import Permission


class JobAware(Requires):
    """`Requires(permission)` that also accepts its job's token for `use`: the job acts as
    its user (their current role and access), narrowed to the job's own scope."""

    def __init__(self, permission: Permission, *, use: JobTokenUse) -> None:
        super().__init__(permission)
        self.use = use

    def __call__(  # type: ignore[override]
        self,
        session: SessionDep,
        credentials: Credentials,
        org: Annotated[str, Path(max_length=64)],
    ) -> Caller:
        if credentials is not None and is_job_token(credentials.credentials):
            caller = job_caller(session, org, credentials.credentials)
            if caller is None:
                raise Unauthenticated(
                    "The job token is unknown, expired or revoked (its job has ended).",
                    code="bad_token",
                )
        else:
            user, token = get_auth(session, credentials)
            caller = self.member(Caller(member_context(session, org, user, token=token)))
        caller.ctx.require(self.permission)
        return caller

    def member(self, caller: Caller) -> Caller:
        """A member's token: allowed as for `Requires`."""
        return caller

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.permission.value}, use={self.use.value})"


class JobOnly(JobAware):
    """Only the job's own token: a member (who sees the org) gets 403 `rule`
    (`lineage_job_only` unless the route names another)."""

    def __init__(
        self,
        permission: Permission,
        *,
        use: JobTokenUse,
        rule: CredentialRule = CredentialRule.lineage_job_only,
    ) -> None:
        super().__init__(permission, use=use)
        self.rule = rule

    def member(self, caller: Caller) -> Caller:
        access.require_rule(False, self.rule)
        return caller


def _walk(dependant: Dependant) -> list[Dependant]:
    found = []
    for sub in dependant.dependencies:
        found.append(sub)
        found.extend(_walk(sub))
    return found


def job_token_use(route: APIRoute) -> JobTokenUse | None:
    """What the route accepts a job token for (its `JobAware` rule), or None. Walked on
    each job-token request only (a few dozen nodes); other requests never get here."""
    rules = [d.call for d in _walk(route.dependant) if isinstance(d.call, JobAware)]
    return rules[0].use if rules else None


async def refuse_job_tokens(request: Request) -> None:
    """The default for every route: a job token is refused unless the route allows it."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not is_job_token(token.strip()):
        return
    route = request.scope.get("route")
    use = job_token_use(route) if isinstance(route, APIRoute) else None
    access.require_rule(access.job_token_allows(use), CredentialRule.job_token_scope)
