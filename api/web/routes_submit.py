"""Submit a job from the console: pick a project and a deployment, fill the parameter
form generated from the flow's schema (api.web.param_form), inputs, resources, tags,
and either Explain (the admission decision, nothing created) or Submit.

Both buttons post the same form; Explain calls `flows.jobs.explain_submission` and
Submit calls `flows.jobs.submit`, the functions behind `POST /orgs/{org}/jobs/explain`
and `POST /orgs/{org}/jobs`, so the page decides nothing the API would not.
No script is needed: Explain answers with the same form, filled, and the decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.errors import status_for
from api.web.core import OrgPage, PageRequires, redirect, render, settings_of
from api.web.param_form import FIELD_PREFIX, fields_for, read_parameters
from api.web.routes_data import gateway_of
from datasets import catalog
from flows import deployments, jobs, projects
from flows.models import Deployment
from policies.errors import DomainError, Invalid
from policies.permissions import Permission

router = APIRouter()

PageJobsSubmit = Annotated[OrgPage, Depends(PageRequires(Permission.jobs_submit))]

# The form's own fields (parameters are FIELD_PREFIX + name).
_FIELDS = ("project", "deployment", "inputs", "tags", "memory_mb", "max_runtime_min", "priority")
_MAX_FIELD = 100_000


@dataclass
class SubmitForm:
    """What the browser sent (or the blank form), kept as text to show it again."""

    values: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # FIELD_PREFIX + name -> text

    def get(self, key: str) -> str:
        return self.values.get(key, "")


def _dep_for(page: OrgPage, name: str) -> Deployment | None:
    return (
        deployments.find_deployment(page.session, page.org, name, viewer=page.ctx.viewer)
        if name
        else None
    )


def _int_field(form: SubmitForm, key: str, errors: dict[str, str], *, scale: int = 1) -> int | None:
    text = form.get(key).strip()
    if not text:
        return None
    try:
        return int(text) * scale
    except ValueError:
        errors[key] = "Enter a whole number."
        return None


def _spec(
    page: OrgPage, dep: Deployment, form: SubmitForm
) -> tuple[jobs.SubmitSpec | None, dict[str, str]]:
    """The submission the form asks for, or the errors beside each field."""
    schema = dep.parameter_schema or {}
    defaults = dep.parameters or {}
    params, param_errors = read_parameters(schema, defaults, form.params)
    errors = {FIELD_PREFIX + k: v for k, v in param_errors.items()}
    inputs: list[Any] = [line.strip() for line in form.get("inputs").splitlines() if line.strip()]
    for line in inputs:
        try:
            catalog.parse_input(line)
        except Invalid as exc:
            errors["inputs"] = f"'{line}': {exc.detail}"
            break
    tags = [t.strip() for t in form.get("tags").replace("\n", ",").split(",") if t.strip()]
    memory_mb = _int_field(form, "memory_mb", errors)
    runtime_s = _int_field(form, "max_runtime_min", errors, scale=60)
    priority = _int_field(form, "priority", errors) or 0
    if errors:
        return None, errors
    return (
        jobs.SubmitSpec(
            deployment=dep.name,
            parameters=params,
            memory_mb=memory_mb,
            max_runtime_s=runtime_s,
            inputs=inputs,
            priority=priority,
            tags=tags,
        ),
        {},
    )


# Where a domain error's `field` is shown on this form.
_FIELD_OF = {
    "inputs": "inputs",
    "tags": "tags",
    "memory_mb": "memory_mb",
    "max_runtime_s": "max_runtime_min",
    "priority": "priority",
    "machine_type": "deployment",
    "deployment": "deployment",
}


def _error_field(exc: DomainError) -> str:
    name = getattr(exc, "field", None) or ""
    if name.startswith("parameters."):
        return FIELD_PREFIX + name.removeprefix("parameters.").split(".")[0]
    if name.startswith("inputs"):
        return "inputs"
    return _FIELD_OF.get(name, "_")


def _render(
    request: Request,
    page: OrgPage,
    form: SubmitForm,
    *,
    code: int = 200,
    errors: Mapping[str, str] | None = None,
    explanation: jobs.Explanation | None = None,
) -> Response:
    project_rows = [
        p for p, _ in projects.list_projects(page.session, page.org, viewer=page.ctx.viewer)
    ]
    project = form.get("project")
    all_deps = deployments.list_deployments(page.session, page.org, viewer=page.ctx.viewer)
    by_project = {p.id: p.name for p in project_rows}
    deps = [
        d
        for d in all_deps
        if not project or (d.project_id is not None and by_project.get(d.project_id) == project)
    ]
    dep = _dep_for(page, form.get("deployment"))
    if dep is not None and dep not in deps:
        dep = None
    params: list[Any] = []
    if dep is not None:
        sent = form.params if form.params or request.method == "POST" else None
        params = fields_for(dep.parameter_schema or {}, dep.parameters or {}, sent)
    readable, _ = catalog.list_datasets(page.session, page.ctx, limit=200, offset=0)
    return render(
        request,
        "submit.html",
        page=page,
        active="jobs",
        status_code=code,
        form=form,
        projects=project_rows,
        deployments=deps,
        dep=dep,
        params=params,
        datasets=readable,
        errors=dict(errors or {}),
        explanation=explanation,
    )


def _form_of(raw: Mapping[str, Any]) -> SubmitForm:
    values = {k: str(raw.get(k, ""))[:_MAX_FIELD] for k in _FIELDS}
    params = {
        k: str(v)[:_MAX_FIELD]
        for k, v in raw.items()
        if isinstance(k, str) and k.startswith(FIELD_PREFIX) and isinstance(v, str)
    }
    return SubmitForm(values, params)


@router.get("/orgs/{org}/jobs/new")
def submit_page(
    request: Request, page: PageJobsSubmit, project: str = "", deployment: str = ""
) -> Response:
    return _render(
        request, page, SubmitForm({"project": project[:64], "deployment": deployment[:64]})
    )


async def _form_data(request: Request) -> dict[str, str]:
    raw = await request.form()  # parsed once per request (the CSRF check read it too)
    return {k: v for k, v in raw.items() if isinstance(v, str)}


@router.post("/orgs/{org}/jobs/new")
def submit_form(
    request: Request,
    page: PageJobsSubmit,
    raw: Annotated[dict[str, str], Depends(_form_data)],
) -> Response:
    form = _form_of(raw)
    action = raw.get("action", "submit")
    dep = _dep_for(page, form.get("deployment"))
    if dep is None:
        return _render(request, page, form, code=422, errors={"deployment": "Choose a deployment."})
    spec, errors = _spec(page, dep, form)
    if spec is None:
        return _render(request, page, form, code=422, errors=errors)
    try:
        if action == "explain":
            explanation = jobs.explain_submission(page.ctx, page.session, spec)
            page.session.rollback()  # explain creates nothing; end the read
            return _render(request, page, form, explanation=explanation)
        job, _ = jobs.submit(
            page.ctx, page.session, gateway_of(request), spec, settings=settings_of(request)
        )
    except DomainError as exc:
        page.session.rollback()
        if exc.code == "role_may_submit":
            raise
        return _render(
            request,
            page,
            form,
            code=status_for(exc),
            errors={_error_field(exc): exc.detail},
        )
    return redirect(page.url(f"/jobs/{job.id}"), notice="submitted")
