"""Organization settings and limits: GET/PUT /orgs/{org}/settings, and its versions.

PUT takes JSON (`{name?, description?, invitations?, machines?, storage?, limits?}`) or, with a
YAML content type, the limits document itself, so an admin can keep it in a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from api.deps import Requires, SessionDep, SettingsDep
from api.schemas import ErrorOut, Page, PublicUserOut
from orgs import organizations, settings_doc, sso
from orgs.context import OrgContext
from orgs.settings_doc import (
    InvitationSettings,
    MachineSettings,
    ProjectSettings,
    SecuritySettings,
    StorageSettings,
)
from orgs.sso_settings import SsoSettings
from policies.errors import Invalid
from policies.limits import LimitsDocument, parse_limits_yaml
from policies.permissions import Permission

router = APIRouter(tags=["settings"])

SettingsView = Annotated[OrgContext, Depends(Requires(Permission.settings_view))]
SettingsUpdate = Annotated[OrgContext, Depends(Requires(Permission.settings_update))]

# A real document is a few hundred bytes; the cap bounds memory and parse time.
MAX_BODY_BYTES = 64 * 1024
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


class SettingsIn(BaseModel):
    """A partial update: sections given replace the stored ones (`invitations`,
    `machines` and `storage` key by key, `limits` as a whole document)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=2000)
    invitations: dict[str, Any] | None = None
    machines: dict[str, Any] | None = None
    storage: dict[str, Any] | None = Field(
        default=None, description="`max_bytes`: the datasets' quota (null: unlimited)."
    )
    sso: dict[str, Any] | None = Field(
        default=None,
        description="`provider`, `allowed_domains`, `required`: sign-in through a provider.",
    )
    limits: dict[str, Any] | None = Field(default=None, description="The limits document.")
    security: dict[str, Any] | None = Field(
        default=None, description="`require_2fa`: members without two-factor get 403."
    )
    projects: dict[str, Any] | None = Field(
        default=None,
        description="`allow_personal`: false stops members creating, deploying into or "
        "running personal projects.",
    )


class SettingsOut(BaseModel):
    name: str
    description: str
    version: int
    invitations: InvitationSettings
    machines: MachineSettings
    storage: StorageSettings
    security: SecuritySettings = SecuritySettings()
    projects: ProjectSettings = ProjectSettings()
    sso: SsoSettings
    limits: LimitsDocument
    members_without_2fa: int | None = Field(
        default=None,
        description="While `security.require_2fa` is on, how many members it turns away "
        "(shown to those who may manage members).",
    )


class SettingsVersionOut(BaseModel):
    version: int
    settings: dict[str, Any]
    created_by: PublicUserOut | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RawBody:
    media_type: str
    data: bytes


async def read_body(request: Request) -> RawBody:
    """The request body, refused with 413 as soon as it passes MAX_BODY_BYTES."""
    too_large = HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"The settings body may be at most {MAX_BODY_BYTES // 1024} KiB.",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return RawBody(media_type, b"".join(chunks))


def _settings_out(ctx: OrgContext, session: Session) -> SettingsOut:
    doc = settings_doc.load(ctx.org.settings)
    without = None
    if doc.security.require_2fa and ctx.can(Permission.members_manage):
        without = settings_doc.members_without_2fa(session, ctx.org.id)
    return SettingsOut(
        security=doc.security,
        projects=doc.projects,
        members_without_2fa=without,
        name=ctx.org.name,
        description=ctx.org.description,
        version=ctx.org.settings_version,
        invitations=doc.invitations,
        machines=doc.machines,
        storage=doc.storage,
        sso=doc.sso,
        limits=doc.limits,
    )


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("The body is not UTF-8 text.", field="body") from None


def _parse_json(data: bytes) -> SettingsIn:
    try:
        parsed = json.loads(_decode(data))
    except (ValueError, RecursionError) as exc:
        raise Invalid(f"The body is not valid JSON: {exc}.", field="body") from None
    if not isinstance(parsed, dict):
        raise Invalid("The body must be a JSON object.", field="body")
    try:
        return SettingsIn.model_validate(parsed)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(SettingsIn.model_fields)
            raise Invalid(
                f"Unknown settings key '{field}' (allowed: {allowed}).", field=field
            ) from None
        raise Invalid(f"{field}: {err['msg']}.", field=field) from None


_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": SettingsIn.model_json_schema()},
        "application/yaml": {
            "schema": {"type": "string", "description": "The limits document as YAML."}
        },
    },
}


@router.get(
    "/orgs/{org}/settings",
    response_model=SettingsOut,
    responses={200: {"content": {"application/yaml": {"schema": {"type": "string"}}}}},
)
def get_settings(
    ctx: SettingsView, request: Request, session: SessionDep
) -> SettingsOut | Response:
    """The settings; with `Accept: application/yaml`, the limits document as YAML."""
    accept = request.headers.get("accept", "").lower()
    if any(t in accept for t in YAML_TYPES) and "json" not in accept:
        text = settings_doc.load(ctx.org.settings).limits.to_yaml()
        return Response(text, media_type="application/yaml")
    return _settings_out(ctx, session)


@router.put(
    "/orgs/{org}/settings",
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        413: {"model": ErrorOut, "description": f"Body over {MAX_BODY_BYTES // 1024} KiB."},
        415: {"model": ErrorOut, "description": "Neither JSON nor YAML."},
    },
)
def put_settings(
    ctx: SettingsUpdate,
    body: Annotated[RawBody, Depends(read_body)],
    session: SessionDep,
    settings: SettingsDep,
) -> SettingsOut:
    if body.media_type in YAML_TYPES:
        limits = parse_limits_yaml(_decode(body.data))
        settings_doc.update(ctx, session, changes={"limits": limits})
        return _settings_out(ctx, session)
    if body.media_type and body.media_type != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "Send JSON (application/json) or the limits document as application/yaml.",
        )
    given = _parse_json(body.data)
    changes = {
        key: value
        for key in ("invitations", "machines", "storage", "security", "projects", "sso", "limits")
        if (value := getattr(given, key)) is not None
    }
    sso.check_org_provider(settings, changes)
    organizations.apply_settings(
        ctx, session, name=given.name, description=given.description, changes=changes
    )
    return _settings_out(ctx, session)


@router.get("/orgs/{org}/settings/versions")
def list_versions(
    # Admins only: the history shows who changed what, like the audit log.
    ctx: SettingsUpdate,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[SettingsVersionOut]:
    rows, total = settings_doc.versions(session, ctx.org.id, limit=limit, offset=offset)
    items = [
        SettingsVersionOut(
            version=v.version,
            settings=v.settings,
            created_by=(
                PublicUserOut(id=v.created_by, name=author)
                if v.created_by is not None and author is not None
                else None
            ),
            created_at=v.created_at,
        )
        for v, author in rows
    ]
    return Page(items=items, total=total, limit=limit, offset=offset)
