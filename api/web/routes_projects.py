"""Projects pages: the list with a create form, and one project's deployments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from api.errors import status_for
from api.web.core import OrgPage, PageRequires, redirect, render
from flows import projects
from policies.errors import DomainError, Invalid
from policies.permissions import Permission

router = APIRouter()

PageDeploymentsView = Annotated[OrgPage, Depends(PageRequires(Permission.deployments_view))]
PageProjectsCreate = Annotated[OrgPage, Depends(PageRequires(Permission.projects_create))]
ProjectName = Annotated[str, PathParam(max_length=64)]


def _projects(
    request: Request,
    page: OrgPage,
    *,
    code: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    return render(
        request,
        "projects.html",
        page=page,
        active="projects",
        status_code=code,
        rows=projects.list_projects(page.session, page.org, viewer=page.ctx.viewer),
        errors=errors or {},
        form=form or {},
    )


@router.get("/orgs/{org}/projects")
def projects_page(request: Request, page: PageDeploymentsView) -> Response:
    return _projects(request, page)


@router.post("/orgs/{org}/projects")
def create_project(
    request: Request,
    page: PageProjectsCreate,
    name: Annotated[str, Form(max_length=200)],
    description: Annotated[str, Form(max_length=projects.MAX_DESCRIPTION)] = "",
    git_url: Annotated[str, Form(max_length=projects.MAX_GIT_URL)] = "",
) -> Response:
    try:
        project = projects.create_project(
            page.ctx, page.session, name=name, description=description, git_url=git_url or None
        )
    except DomainError as exc:
        field = exc.field if isinstance(exc, Invalid) and exc.field else "name"
        return _projects(
            request,
            page,
            code=status_for(exc),
            errors={field: exc.detail},
            form={"name": name, "description": description, "git_url": git_url},
        )
    return redirect(page.url(f"/projects/{project.name}"), notice="project_created")


@router.get("/orgs/{org}/projects/{name}")
def project_page(request: Request, page: PageDeploymentsView, name: ProjectName) -> Response:
    project = projects.get_project(page.session, page.org, name, viewer=page.ctx.viewer)
    return render(
        request,
        "project.html",
        page=page,
        active="projects",
        project=project,
        deployments=projects.project_deployments(page.session, project),
    )
