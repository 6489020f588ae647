"""Settings (admins): name and description, invitations, machine approval, the limits
document, notification webhooks, the Danger Zone; and the audit log.

Every change goes through `orgs.organizations.apply_settings` (or the notification and
organization services), exactly like `PUT /orgs/{org}/settings`. The limits editor shows
the policy's own validation error beside the key it names (`Invalid.field` is the dotted
key path, e.g. `limits.organization.limits.max_job_runtime`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from api.errors import status_for
from api.web import audit_targets, settings_labels
from api.web.core import OrgPage, PageRequires, redirect, render, settings_of
from orgs import audit, logos, notifications, organizations, settings_doc
from policies.errors import DomainError, Invalid
from policies.limits import Limits, MachineTypeLimits, parse_limits_yaml
from policies.permissions import Permission

router = APIRouter()

PageAuditView = Annotated[OrgPage, Depends(PageRequires(Permission.audit_view))]
PageOrgDelete = Annotated[OrgPage, Depends(PageRequires(Permission.org_delete))]
PageSettingsUpdate = Annotated[OrgPage, Depends(PageRequires(Permission.settings_update))]

LIMIT_KEYS = tuple(Limits.model_fields)
TYPE_KEYS = tuple(MachineTypeLimits.model_fields)
EXTRA_TYPE_ROWS = 2
_INT = re.compile(r"^[+-]?\d{1,18}$")


# ------------------------------------------------------------------ the limits editor


@dataclass
class LimitsForm:
    """What the limits editor shows: values as typed, and errors by dotted key path."""

    limits: dict[str, str]
    types: list[dict[str, str]]
    yaml_text: str
    errors: dict[str, str] = field(default_factory=dict)
    general_error: str | None = None
    yaml_error: str | None = None
    yaml_error_line: int | None = None

    def error_for(self, key: str) -> str | None:
        return self.errors.get(key)


def _limits_form(page: OrgPage) -> LimitsForm:
    doc = settings_doc.load(page.org.settings).limits
    limits = {k: str(v) for k, v in doc.limits.model_dump().items()}
    types = [
        {"name": name, **{k: str(v) for k, v in t.model_dump().items()}}
        for name, t in doc.machine_types.items()
    ]
    return LimitsForm(limits=limits, types=types, yaml_text=doc.to_yaml())


def _scalar(text: str) -> object:
    """A typed value from a form field: integers as numbers, anything else as typed, so
    the policy (strict on types) names the problem ("must be an integer, got ...")."""
    text = text.strip()
    return int(text) if _INT.match(text) else text


def _document_from_form(form: FormData) -> tuple[dict[str, Any], LimitsForm]:
    limits_raw = {k: str(form.get(f"limits.{k}", "")) for k in LIMIT_KEYS}
    rows: list[dict[str, str]] = []
    i = 0
    while f"type-{i}-name" in form and i < 200:
        row = {"name": str(form.get(f"type-{i}-name", "")).strip()}
        row |= {k: str(form.get(f"type-{i}-{k}", "")) for k in TYPE_KEYS}
        row["remove"] = "yes" if form.get(f"type-{i}-remove") == "yes" else ""
        rows.append(row)
        i += 1
    limits = {k: _scalar(v) for k, v in limits_raw.items() if v.strip()}
    types: dict[str, Any] = {}
    for row in rows:
        if row["remove"] or not row["name"]:
            continue
        types[row["name"]] = {k: _scalar(row[k]) for k in TYPE_KEYS if row[k].strip()}
    document = {"organization": {"limits": limits, "machine_types": types}}
    shown = LimitsForm(
        limits=limits_raw,
        types=[r for r in rows if r["name"] or any(r[k].strip() for k in TYPE_KEYS)],
        yaml_text=yaml.safe_dump(document, sort_keys=False),
    )
    return document, shown


def _error_key(field_path: str | None, shown: LimitsForm) -> str | None:
    """Where on the form an error goes: `limits.<key>`, `type-<i>-<key>`, `types`."""
    if not field_path:
        return None
    parts = field_path.split(".")
    if parts[:1] == ["limits"]:
        parts = parts[1:]  # inside a settings body the document sits under `limits`
    if parts[:2] == ["organization", "limits"] and len(parts) >= 3:
        return f"limits.{parts[2]}"
    if parts[:2] == ["organization", "machine_types"]:
        if len(parts) >= 3:
            for i, row in enumerate(shown.types):
                if row["name"] == parts[2]:
                    return f"type-{i}-{parts[3]}" if len(parts) >= 4 else f"type-{i}-name"
        return "types"
    return None


def _yaml_line(text: str, field_path: str | None) -> int | None:
    """1-based line of the deepest key of `field_path` in the YAML (for the marker)."""
    if not field_path:
        return None
    parts = field_path.split(".")
    if parts[:1] == ["limits"]:
        parts = parts[1:]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    line = None
    for part in parts:
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                line, node = key.start_mark.line + 1, value
                break
        else:
            break
    return line


# ------------------------------------------------------------------ the page


def _settings(
    request: Request,
    page: OrgPage,
    *,
    code: int = 200,
    limits_form: LimitsForm | None = None,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    page.require(Permission.settings_update)
    doc = settings_doc.load(page.org.settings)
    targets = notifications.list_targets(page.session, page.org.id)
    deliveries = notifications.list_deliveries(page.session, page.org.id, limit=10)
    without_2fa = (
        settings_doc.members_without_2fa(page.session, page.org.id)
        if doc.security.require_2fa
        else None
    )
    return render(
        request,
        "settings.html",
        page=page,
        active="settings",
        status_code=code,
        doc=doc,
        limits_form=limits_form or _limits_form(page),
        limit_keys=LIMIT_KEYS,
        setting_label=settings_labels.label,
        setting_help=settings_labels.help_for,
        type_keys=TYPE_KEYS,
        extra_type_rows=EXTRA_TYPE_ROWS,
        targets=targets,
        deliveries=deliveries,
        events=notifications.EVENTS,
        kinds=KIND_LABELS,
        errors=errors or {},
        form=form or {},
        without_2fa=without_2fa,
        has_logo=logos.has_logo(page.session, page.org.id),
    )


def settings_response(
    request: Request, page: OrgPage, code: int, errors: dict[str, str]
) -> Response:
    """The settings page again with `errors` by key (for forms handled elsewhere)."""
    return _settings(request, page, code=code, errors=errors)


@router.get("/orgs/{org}/settings")
def settings_page(request: Request, page: PageSettingsUpdate) -> Response:
    return _settings(request, page)


def _apply(
    request: Request,
    page: OrgPage,
    form: dict[str, str],
    *,
    name: str | None = None,
    description: str | None = None,
    changes: dict[str, Any] | None = None,
    prefix: str,
) -> Response:
    try:
        organizations.apply_settings(
            page.ctx, page.session, name=name, description=description, changes=changes or {}
        )
    except Invalid as exc:
        page.session.rollback()
        key = exc.field or prefix
        if "." in key and not key.startswith(prefix):
            key = f"{prefix}.{key}"
        return _settings(request, page, code=422, errors={key: exc.detail}, form=form)
    return redirect(page.url("/settings"), notice="saved")


@router.post("/orgs/{org}/settings/general")
def save_general(
    request: Request,
    page: PageSettingsUpdate,
    name: Annotated[str, Form(max_length=100)],
    description: Annotated[str, Form(max_length=2000)] = "",
    contact_email: Annotated[str | None, Form(max_length=320)] = None,
) -> Response:
    form = {"name": name, "description": description, "contact_email": contact_email or ""}
    if contact_email is not None:  # not sent: unchanged
        try:
            logos.set_contact_email(page.ctx, page.session, contact_email)
            # Written now: apply_settings re-reads the organization's row under a lock.
            page.session.flush()
        except Invalid as exc:
            page.session.rollback()
            return _settings(
                request, page, code=422, errors={"contact_email": exc.detail}, form=form
            )
    return _apply(request, page, form, name=name, description=description, prefix="general")


def _int_field(value: str, key: str) -> int | str:
    value = value.strip()
    if not _INT.match(value):
        raise Invalid("Enter a whole number.", field=key)
    return int(value)


@router.post("/orgs/{org}/settings/invitations")
def save_invitations(
    request: Request,
    page: PageSettingsUpdate,
    who_may_invite: Annotated[str, Form(max_length=20)],
    default_expiry_hours: Annotated[str, Form(max_length=12)],
) -> Response:
    form = {"who_may_invite": who_may_invite, "default_expiry_hours": default_expiry_hours}
    try:
        hours = _int_field(default_expiry_hours, "invitations.default_expiry_hours")
    except Invalid as exc:
        return _settings(request, page, code=422, errors={str(exc.field): exc.detail}, form=form)
    changes = {"invitations": {"who_may_invite": who_may_invite, "default_expiry_hours": hours}}
    return _apply(request, page, form, changes=changes, prefix="invitations")


@router.post("/orgs/{org}/settings/machines")
def save_machines(
    request: Request,
    page: PageSettingsUpdate,
    offline_after_s: Annotated[str, Form(max_length=12)],
    approval_required: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    form = {"offline_after_s": offline_after_s, "approval_required": approval_required}
    try:
        seconds = _int_field(offline_after_s, "machines.offline_after_s")
    except Invalid as exc:
        return _settings(request, page, code=422, errors={str(exc.field): exc.detail}, form=form)
    changes = {
        "machines": {"approval_required": approval_required == "yes", "offline_after_s": seconds}
    }
    return _apply(request, page, form, changes=changes, prefix="machines")


@router.post("/orgs/{org}/settings/security")
def save_security(
    request: Request,
    page: PageSettingsUpdate,
    require_2fa: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    form = {"require_2fa": require_2fa}
    changes = {"security": {"require_2fa": require_2fa == "yes"}}
    try:
        return _apply(request, page, form, changes=changes, prefix="security")
    except DomainError as exc:  # e.g. 409: the admin has no two-factor themselves
        page.session.rollback()
        errors = {"security.require_2fa": exc.detail}
        return _settings(request, page, code=status_for(exc), errors=errors, form=form)


@router.post("/orgs/{org}/settings/projects")
def save_projects(
    request: Request,
    page: PageSettingsUpdate,
    allow_personal: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    form = {"allow_personal": allow_personal}
    changes = {"projects": {"allow_personal": allow_personal == "yes"}}
    return _apply(request, page, form, changes=changes, prefix="projects")


async def form_data(request: Request) -> FormData:
    """The whole form, for editors whose field names are not fixed (one per row)."""
    return await request.form()


@router.post("/orgs/{org}/settings/limits")
def save_limits(
    request: Request, page: PageSettingsUpdate, form: Annotated[FormData, Depends(form_data)]
) -> Response:
    """The limits editor: the form's fields, or (mode=yaml) the whole document as YAML."""
    return _save_limits(request, page, form)


def _save_limits(request: Request, page: OrgPage, form: FormData) -> Response:
    mode = form.get("mode")
    if mode == "yaml":
        text = str(form.get("yaml", ""))
        shown = _limits_form(page)
        shown.yaml_text = text
        try:
            document: Any = parse_limits_yaml(text)
            settings_doc.update(page.ctx, page.session, changes={"limits": document})
        except Invalid as exc:
            page.session.rollback()
            shown.yaml_error = exc.detail
            shown.yaml_error_line = _yaml_line(text, exc.field)
            return _settings(request, page, code=422, limits_form=shown)
        return redirect(page.url("/settings"), notice="saved")
    document, shown = _document_from_form(form)
    try:
        settings_doc.update(page.ctx, page.session, changes={"limits": document})
    except Invalid as exc:
        page.session.rollback()
        key = _error_key(exc.field, shown)
        if key is None:
            shown.general_error = exc.detail
        else:
            shown.errors[key] = exc.detail
        return _settings(request, page, code=422, limits_form=shown)
    return redirect(page.url("/settings"), notice="saved")


# ------------------------------------------------------------------ notifications


KIND_LABELS: tuple[tuple[notifications.Kind, str], ...] = (
    ("slack", "Slack"),
    ("msteams", "Microsoft Teams (workflow)"),
    ("discord", "Discord"),
    ("email", "E-mail"),
    ("webhook", "Webhook (signed)"),
)
_KIND_OF: dict[str, notifications.Kind] = {k: k for k, _label in KIND_LABELS}


def _specs(targets: list[notifications.NotificationTarget]) -> list[notifications.TargetSpec]:
    # Unchanged targets are sent back without their secret: the service keeps it.
    return [
        notifications.TargetSpec(
            kind=_KIND_OF.get(t.kind, "webhook"),
            url=t.url,
            secret=None,
            events=tuple(t.events),
        )
        for t in targets
    ]


@router.post("/orgs/{org}/settings/notifications")
def add_target(
    request: Request,
    page: PageSettingsUpdate,
    kind: Annotated[str, Form(max_length=16)],
    url: Annotated[str, Form(max_length=2048)],
    secret: Annotated[str, Form(max_length=256)] = "",
    events: Annotated[list[str] | None, Form(max_length=16)] = None,
) -> Response:
    form = {"kind": kind, "url": url}
    existing = notifications.list_targets(page.session, page.org.id)
    try:
        if kind not in _KIND_OF:
            raise Invalid("Pick one of the kinds.", field="kind")
        new = notifications.TargetSpec(
            kind=_KIND_OF[kind],
            url=url.strip(),
            secret=secret or None,
            events=tuple(events or ()),
        )
        notifications.replace_targets(
            page.ctx, page.session, [*_specs(existing), new], settings=settings_of(request)
        )
    except Invalid as exc:
        page.session.rollback()
        where = (exc.field or "url").rsplit(".", 1)[-1]
        return _settings(request, page, code=422, errors={f"notify.{where}": exc.detail}, form=form)
    return redirect(page.url("/settings"), notice="notifications")


@router.post("/orgs/{org}/settings/notifications/{target_id}/remove")
def remove_target(request: Request, page: PageSettingsUpdate, target_id: str) -> Response:
    existing = notifications.list_targets(page.session, page.org.id)
    kept = [t for t in existing if str(t.id) != target_id]
    notifications.replace_targets(
        page.ctx, page.session, _specs(kept), settings=settings_of(request)
    )
    return redirect(page.url("/settings"), notice="notifications")


@router.post("/orgs/{org}/settings/notifications/test")
def test_targets(page: PageSettingsUpdate) -> Response:
    notifications.send_test(page.ctx, page.session)
    return redirect(page.url("/settings"), notice="test_sent")


# ------------------------------------------------------------------ danger zone


@router.post("/orgs/{org}/settings/delete")
def delete_org(
    request: Request,
    page: PageOrgDelete,
    confirm: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    try:
        organizations.delete(page.ctx, page.session, confirm=confirm)
    except Invalid as exc:
        return _settings(request, page, code=422, errors={"confirm": exc.detail})
    return redirect("/", notice="deleted")


# ------------------------------------------------------------------ audit

AUDIT_PAGE = 50


def _day(text: str, field_name: str, *, end: bool = False) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise Invalid("Use a date like 2025-01-31.", field=field_name) from None
    if end:  # "until 31 Jan" includes that day
        return datetime.combine(day.date(), time.max, tzinfo=UTC)
    return day


@router.get("/orgs/{org}/audit")
def audit_page(
    request: Request,
    page: PageAuditView,
    action: str = "",
    actor: str = "",
    target_id: str = "",
    since: str = "",
    until: str = "",
    cursor: int | None = None,
) -> Response:
    filters = {
        "action": action.strip()[:64],
        "actor": actor.strip()[:64],
        "target_id": target_id.strip()[:64],
        "since": since,
        "until": until,
    }
    error = None
    rows: list[Any] = []
    next_cursor = None
    try:
        rows, next_cursor = audit.query(
            page.session,
            page.org.id,
            action=filters["action"] or None,
            actor=filters["actor"] or None,
            target_id=filters["target_id"] or None,
            since=_day(since, "since"),
            until=_day(until, "until", end=True),
            cursor=cursor if cursor and cursor > 0 else None,
            limit=AUDIT_PAGE,
        )
    except DomainError as exc:
        error = exc.detail
    return render(
        request,
        "audit.html",
        page=page,
        active="audit",
        status_code=422 if error else 200,
        rows=rows,
        targets=audit_targets.resolve(page.session, page.org, rows),
        next_cursor=next_cursor,
        filters=filters,
        error=error,
    )
