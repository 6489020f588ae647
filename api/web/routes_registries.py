"""The private Docker registries page (admins): prefixes and usernames, a form to add one
(or replace its login), a remove button per row. Write-only like the API: no page shows
a password, and a form sent back after an error never carries the one it was given.
Same service as /orgs/{org}/registries (orgs.registries)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from api.errors import status_for
from api.web.core import OrgPage, PageRequires, redirect, render, settings_of
from orgs import registries
from policies.errors import DomainError
from policies.permissions import Permission

router = APIRouter()

PageRegistriesManage = Annotated[OrgPage, Depends(PageRequires(Permission.registries_manage))]


def _page(
    request: Request,
    page: OrgPage,
    *,
    code: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    return render(
        request,
        "registries.html",
        page=page,
        active="registries",
        status_code=code,
        rows=registries.list_registries(page.session, page.org.id),
        errors=errors or {},
        form=form or {},
    )


@router.get("/orgs/{org}/registries")
def registries_page(request: Request, page: PageRegistriesManage) -> Response:
    return _page(request, page)


@router.post("/orgs/{org}/registries")
def add_registry(
    request: Request,
    page: PageRegistriesManage,
    registry: Annotated[str, Form(max_length=300)] = "",
    username: Annotated[str, Form(max_length=255)] = "",
    password: Annotated[str, Form()] = "",
) -> Response:
    try:
        _, created = registries.add_registry(
            page.ctx, page.session, registry, username, password, settings=settings_of(request)
        )
    except DomainError as exc:
        page.session.rollback()
        field = getattr(exc, "field", None) or "registry"
        if field not in ("registry", "username", "password"):
            field = "password" if field == "value" else "registry"
        return _page(
            request,
            page,
            code=status_for(exc),
            errors={field: exc.detail},
            form={"registry": registry, "username": username},
        )
    return redirect(page.url("/registries"), notice="registry_added" if created else "registry_set")


@router.post("/orgs/{org}/registries/{key}/delete")
def remove_registry(page: PageRegistriesManage, key: str) -> Response:
    try:
        registries.remove_registry(page.ctx, page.session, key[:300])
    except DomainError:
        page.session.rollback()
        raise
    return redirect(page.url("/registries"), notice="registry_removed")
