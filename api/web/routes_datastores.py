"""The data stores page (admins): where the organization's bytes go and each project's
default store for outputs, a form to set one (S3, Swift, Azure, GCS), and a button to go
back to the default. Credentials are write-only like the API: the page shows only what
the API shows of them (a key id, a service account's e-mail), and a form sent back after
an error never carries a secret it was given."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from api.routers.datasets import DatastoreIn, apply_datastore
from api.web.core import OrgPage, PageRequires, redirect, render, settings_of
from datasets import stores
from flows import projects
from flows.models import Project
from policies.errors import Invalid
from policies.permissions import Permission

router = APIRouter()

PageStorageConfigure = Annotated[OrgPage, Depends(PageRequires(Permission.storage_configure))]
SECRET_FIELDS = ("secret_access_key", "account_key", "sas_token", "service_account_json")
KIND_LABELS = {
    "default": "The installation's store",
    "s3": "Amazon S3 (or S3-compatible)",
    "swift": "OpenStack Swift (S3 API)",
    "azure": "Azure Blob Storage",
    "gcs": "Google Cloud Storage",
}


def _project_list(page: OrgPage) -> list[Project]:
    return [p for p, _n in projects.list_projects(page.session, page.org, viewer=page.ctx.viewer)]


def _page(
    request: Request,
    page: OrgPage,
    *,
    code: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    settings = settings_of(request)
    org_store = stores.describe(page.session, settings, page.org.id)
    rows = [("", "The organization (every upload)", org_store)]
    found = _project_list(page)
    for project in found:
        described = stores.describe(page.session, settings, page.org.id, project.id)
        if described["id"] is not None:
            rows.append((project.name, f"Project {project.name} (its jobs' outputs)", described))
    return render(
        request,
        "datastores.html",
        page=page,
        active="datastores",
        status_code=code,
        rows=rows,
        projects=[p.name for p in found],
        kinds=KIND_LABELS,
        errors=errors or {},
        form=form or {},
    )


@router.get("/orgs/{org}/datastores")
def datastores_page(request: Request, page: PageStorageConfigure) -> Response:
    return _page(request, page)


@router.post("/orgs/{org}/datastores")
async def set_datastore(request: Request, page: PageStorageConfigure) -> Response:
    sent = await request.form()
    fields: dict[str, Any] = {
        k: str(v).strip() for k, v in sent.items() if k != "csrf_token" and str(v).strip()
    }
    project = fields.pop("project", "") or None
    fields["verify"] = fields.get("verify") == "on"
    kept = {k: v for k, v in fields.items() if k not in SECRET_FIELDS and isinstance(v, str)}
    if project:
        kept["project"] = project
    try:
        body = DatastoreIn(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else "kind"
        return _page(request, page, code=422, errors={field: first["msg"]}, form=kept)
    try:
        found = (
            projects.get_project(page.session, page.org, project, viewer=page.ctx.viewer)
            if project
            else None
        )
        apply_datastore(
            body, page.ctx, page.session, settings_of(request), found.id if found else None
        )
    except Invalid as exc:
        page.session.rollback()
        return _page(request, page, code=422, errors={exc.field or "kind": exc.detail}, form=kept)
    return redirect(page.url("/datastores"), notice="datastore_set")


@router.post("/orgs/{org}/datastores/reset")
def reset_datastore(
    request: Request,
    page: PageStorageConfigure,
    project: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    found = (
        projects.get_project(page.session, page.org, project, viewer=page.ctx.viewer)
        if project
        else None
    )
    apply_datastore(
        DatastoreIn(kind="default"),
        page.ctx,
        page.session,
        settings_of(request),
        found.id if found else None,
    )
    return redirect(page.url("/datastores"), notice="datastore_reset")
