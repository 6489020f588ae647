"""Machines and datasets pages.

Where a REST route does more than call one service function (rejecting or removing a
machine also settles the runs on it; an upload streams through a worker thread; a
download is verified while it streams), the page calls that route's function itself,
so the behaviour cannot drift apart.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.responses import Response as PlainResponse

from api.errors import status_for
from api.routers import datasets as dataset_routes
from api.routers import machines as machine_routes
from api.web.core import OrgPage, PageRequires, redirect, render, settings_of
from datasets import catalog
from datasets.access import Caller
from datasets.models import VISIBILITIES
from flows import lineage
from flows.gateway import PrefectGateway, work_pool_name
from orgs import machines, organizations, settings_doc, usage_views
from orgs.machines import MachineStatus
from policies import access
from policies.access import MachineFacts
from policies.errors import DomainError, Invalid
from policies.permissions import Permission

router = APIRouter()

PageDatasetsCreate = Annotated[OrgPage, Depends(PageRequires(Permission.datasets_create))]
PageDatasetsRead = Annotated[OrgPage, Depends(PageRequires(Permission.datasets_read))]
PageMachinesApprove = Annotated[OrgPage, Depends(PageRequires(Permission.machines_approve))]
PageMachinesManageOwn = Annotated[OrgPage, Depends(PageRequires(Permission.machines_manage_own))]
PageMachinesView = Annotated[OrgPage, Depends(PageRequires(Permission.machines_view))]

MachineId = Annotated[uuid.UUID, PathParam()]
DatasetName = Annotated[str, PathParam(max_length=200)]


def gateway_of(request: Request) -> PrefectGateway:
    gateway: PrefectGateway = request.app.state.gateway
    return gateway


# ------------------------------------------------------------------ machines


def _machine_rows(page: OrgPage, status: str) -> tuple[list[dict[str, Any]], int]:
    wanted = MachineStatus(status) if status in MachineStatus.__members__ else None
    views, total = machines.list_machines(page.session, page.ctx, status=wanted, limit=500)
    activity = usage_views.machine_activity(page.session, page.org)
    rows = []
    for v in views:
        m = v.machine
        own = m.owner_id == page.viewer.user.id
        facts = MachineFacts.of(m)
        rows.append(
            {
                "view": v,
                "machine": m,
                "activity": activity.get(m.id),
                "hw": dict(m.hardware or {}),
                "pool": work_pool_name(page.org.slug, m.machine_type),
                "can_decide": page.can(Permission.machines_approve),
                "can_remove": access.can_manage_machine(page.ctx.viewer, facts),
                "own": own,
            }
        )
    return rows, total


def _machines(
    request: Request, page: OrgPage, *, status: str = "", error: str | None = None, code: int = 200
) -> Response:
    page.require(Permission.machines_view)
    rows, total = _machine_rows(page, status)
    doc = settings_doc.load(page.org.settings)
    partial = request.headers.get("HX-Request") == "true" and request.method == "GET"
    return render(
        request,
        "_machines_table.html" if partial else "machines.html",
        page=page,
        active="machines",
        status_code=code,
        rows=rows,
        total=total,
        status=status,
        statuses=[s.value for s in MachineStatus],
        machine_types=sorted(doc.limits.machine_types),
        approval_required=doc.machines.approval_required,
        server_url=settings_of(request).public_url.rstrip("/"),
        error=error,
    )


@router.get("/orgs/{org}/machines")
def machines_page(request: Request, page: PageMachinesView, status: str = "") -> Response:
    return _machines(request, page, status=status)


@router.post("/orgs/{org}/machines/{machine_id}/approve")
def approve_machine(page: PageMachinesApprove, machine_id: MachineId) -> Response:
    machines.approve(page.ctx, page.session, machine_id)
    return redirect(page.url("/machines"), notice="approved")


@router.post("/orgs/{org}/machines/{machine_id}/reject")
def reject_machine(
    request: Request,
    page: PageMachinesApprove,
    machine_id: MachineId,
    reason: Annotated[str, Form(max_length=machines.MAX_REASON_CHARS)] = "",
) -> Response:
    machine_routes.reject_machine(
        machine_id,
        page.ctx,
        page.session,
        gateway_of(request),
        machine_routes.RejectIn(reason=reason),
    )
    return redirect(page.url("/machines"), notice="rejected")


@router.post("/orgs/{org}/machines/{machine_id}/remove")
def remove_machine(
    request: Request, page: PageMachinesManageOwn, machine_id: MachineId
) -> Response:
    machine_routes.remove_machine(machine_id, page.ctx, page.session, gateway_of(request))
    return redirect(page.url("/machines"), notice="machine_removed")


# ------------------------------------------------------------------ datasets

DATASETS_PER_PAGE = 100


def _datasets(
    request: Request,
    page: OrgPage,
    *,
    offset: int = 0,
    code: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    page.require(Permission.datasets_read)
    rows, total = catalog.list_datasets(
        page.session, page.ctx, limit=DATASETS_PER_PAGE, offset=offset
    )
    return render(
        request,
        "datasets.html",
        page=page,
        active="datasets",
        status_code=code,
        rows=rows,
        total=total,
        offset=offset,
        per_page=DATASETS_PER_PAGE,
        visibilities=VISIBILITIES,
        errors=errors or {},
        form=form or {},
    )


@router.get("/orgs/{org}/datasets")
def datasets_page(request: Request, page: PageDatasetsRead, offset: int = 0) -> Response:
    return _datasets(request, page, offset=max(0, min(offset, 10_000_000)))


@router.post("/orgs/{org}/datasets")
def create_dataset(
    request: Request,
    page: PageDatasetsCreate,
    name: Annotated[str, Form(max_length=1000)],
    description: Annotated[str, Form(max_length=10_000)] = "",
    visibility: Annotated[str, Form(max_length=20)] = "org",
) -> Response:
    try:
        dataset = catalog.create_dataset(
            page.ctx, page.session, name=name, description=description, visibility=visibility
        )
    except DomainError as exc:
        field = exc.field if isinstance(exc, Invalid) and exc.field else "name"
        return _datasets(
            request,
            page,
            code=status_for(exc),
            errors={field: exc.detail},
            form={"name": name, "description": description, "visibility": visibility},
        )
    return redirect(page.url(f"/datasets/{dataset.name}"), notice="dataset_created")


def _dataset_page(
    request: Request,
    page: OrgPage,
    name: str,
    *,
    code: int = 200,
    error: str | None = None,
    delete_error: str | None = None,
) -> Response:
    page.require(Permission.datasets_read)
    dataset = catalog.find_dataset(page.session, page.ctx, name)
    detail = catalog.dataset_detail(page.session, page.ctx, dataset, jobs_using=lineage.jobs_using)
    live = [i.version for i in detail.versions if i.version.tombstoned_at is None]
    members: list[Any] = []
    if detail.can_write:
        members, _ = organizations.list_members(page.session, page.org, limit=1000, offset=0)
    return render(
        request,
        "dataset.html",
        page=page,
        active="datasets",
        status_code=code,
        dataset=dataset,
        detail=detail,
        live_count=len(live),
        live_size=sum(v.size for v in live),
        granted={u.id for u in detail.members},
        org_members=members,
        visibilities=VISIBILITIES,
        error=error,
        delete_error=delete_error,
    )


@router.get("/orgs/{org}/datasets/{name}")
def dataset_page(request: Request, page: PageDatasetsRead, name: DatasetName) -> Response:
    return _dataset_page(request, page, name)


@router.post("/orgs/{org}/datasets/{name}/versions")
async def upload_version(
    request: Request,
    page: PageDatasetsCreate,
    name: DatasetName,
    filename: str | None = None,
    description: str | None = None,
) -> Response:
    """The page's upload: the browser streams the file here (XHR, with a progress bar;
    CSRF in the header) and the REST upload route's own function does the rest."""
    # The REST handler answers 201, and sets 200 on this object when the content
    # equals the latest version (no new version).
    response = PlainResponse(status_code=201)
    version = await dataset_routes.upload_version(
        name=name,
        request=request,
        response=response,
        caller=Caller(page.ctx),
        session=page.session,
        settings=settings_of(request),
        filename=filename,
        description=description,
        job=None,
        x_content_sha256=request.headers.get("X-Content-SHA256"),
    )
    return JSONResponse(version.model_dump(mode="json"), status_code=response.status_code)


@router.get("/orgs/{org}/datasets/{name}/versions/{version}/download")
def download_version(
    request: Request,
    page: PageDatasetsRead,
    name: DatasetName,
    version: Annotated[str, PathParam(max_length=20)],
) -> StreamingResponse:
    return dataset_routes.download_version(
        name, version, Caller(page.ctx), page.session, settings_of(request)
    )


@router.post("/orgs/{org}/datasets/{name}/access")
def set_access(
    request: Request,
    page: PageDatasetsCreate,
    name: DatasetName,
    visibility: Annotated[str, Form(max_length=20)],
    members: Annotated[list[str] | None, Form(max_length=1000)] = None,
) -> Response:
    dataset = catalog.find_dataset(page.session, page.ctx, name)
    try:
        catalog.set_access(
            page.ctx, page.session, dataset, visibility=visibility, members=members or []
        )
    except Invalid as exc:
        return _dataset_page(request, page, name, code=422, error=exc.detail)
    return redirect(page.url(f"/datasets/{name}"), notice="access")


@router.post("/orgs/{org}/datasets/{name}/delete")
def delete_dataset(
    request: Request,
    page: PageDatasetsCreate,
    name: DatasetName,
    confirm: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    dataset = catalog.find_dataset(page.session, page.ctx, name)
    if confirm != dataset.name:
        return _dataset_page(
            request,
            page,
            name,
            code=422,
            delete_error="Type the dataset's exact name to delete it.",
        )
    catalog.delete_dataset(page.session, settings_of(request), page.ctx, dataset)
    return redirect(page.url("/datasets"), notice="dataset_deleted")
