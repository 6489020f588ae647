"""The secrets page (admins): names and who set them when, a form to set one, a delete
button per row. Write-only like the API: no page ever shows a value, and a form sent
back after an error never carries the value it was given."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from api.web.core import OrgPage, PageRequires, redirect, render, settings_of
from orgs import secrets
from policies.errors import DomainError, Invalid
from policies.permissions import Permission

router = APIRouter()

PageSecretsManage = Annotated[OrgPage, Depends(PageRequires(Permission.secrets_manage))]


def _page(
    request: Request,
    page: OrgPage,
    *,
    code: int = 200,
    errors: dict[str, str] | None = None,
    name: str = "",
) -> Response:
    rows, total = secrets.list_secrets(page.session, page.org.id, limit=1000)
    return render(
        request,
        "secrets.html",
        page=page,
        active="secrets",
        status_code=code,
        rows=rows,
        total=total,
        errors=errors or {},
        name=name,
        max_kib=secrets.MAX_VALUE_BYTES // 1024,
    )


@router.get("/orgs/{org}/secrets")
def secrets_page(request: Request, page: PageSecretsManage) -> Response:
    return _page(request, page)


@router.post("/orgs/{org}/secrets")
def set_secret(
    request: Request,
    page: PageSecretsManage,
    name: Annotated[str, Form(max_length=64)],
    value: Annotated[str, Form()] = "",
) -> Response:
    name = name.strip()
    try:
        secrets.set_secret(page.ctx, page.session, name, value, settings=settings_of(request))
    except Invalid as exc:
        page.session.rollback()
        return _page(request, page, code=422, errors={exc.field or "name": exc.detail}, name=name)
    return redirect(page.url("/secrets"), notice="secret_set")


@router.post("/orgs/{org}/secrets/{name}/delete")
def delete_secret(request: Request, page: PageSecretsManage, name: str) -> Response:
    try:
        secrets.delete_secret(page.ctx, page.session, name)
    except DomainError:
        page.session.rollback()
        raise
    return redirect(page.url("/secrets"), notice="secret_deleted")
