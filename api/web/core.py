"""What every page shares: the org page context, template rendering, redirects, notices.

Pages call the same service functions as the REST routers and declare the same
permissions (`PageRequires`, the API's `Requires` for cookie sessions); who may see or act
on one job, machine or dataset is `policies.access`, as for the API. Templates only decide
which controls to *show*, through `can(...)` and those predicates, never what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.orm import Session

from api import format as fmt
from api.deps import Requires, SessionDep
from api.web import csrf
from api.web.session import Viewer, ViewerDep
from orgs import logos, organizations, settings_doc
from orgs.config import Settings
from orgs.context import OrgContext, member_context
from orgs.models import Organization
from policies.permissions import Permission, Role
from policies.prefect_ui import org_ui_access

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# Pages may carry secrets shown once (invitation codes): never cache them; scripts and
# styles only from this site (no CDN, no inline script), no framing.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Links to the Prefect UI must not carry our URLs (an invitation page's code) along.
    "Referrer-Policy": "same-origin",
}

# Notices after a redirect are looked up here, never echoed from the URL.
NOTICES: Mapping[str, str] = {
    "joined": "Welcome! You joined the organization.",
    "created": "Organization created. You are its owner.",
    "left": "You left the organization.",
    "deleted": "The organization was deleted.",
    "revoked": "Invitation revoked.",
    "role": "Role changed.",
    "removed": "Member removed.",
    "approved": "Machine approved.",
    "rejected": "Machine rejected.",
    "machine_removed": "Machine removed.",
    "cancelled": "Cancellation requested.",
    "rerun": "Submitted again as a new job.",
    "tagged": "Tags saved.",
    "submitted": "Job submitted.",
    "token_revoked": "Token revoked: it no longer works.",
    "dataset_created": "Dataset created. Upload its first version below.",
    "dataset_deleted": "Dataset deleted.",
    "project_created": "Project created. Deploy into it with `cshare deploy --project`.",
    "access": "Access settings saved.",
    "saved": "Settings saved.",
    "secret_set": "Secret saved. Its value is not shown again.",
    "secret_deleted": "Secret deleted.",
    "registry_added": "Registry added. Its password is not shown again.",
    "registry_set": "Registry login replaced. Its password is not shown again.",
    "registry_removed": "Registry removed.",
    "team_created": "Team created. Add its members below.",
    "team_member_added": "Added to the team.",
    "team_member_removed": "Removed from the team.",
    "team_deleted": (
        "Team deleted. Projects shared only with it are now seen by admins and their creator."
    ),
    "datastore_set": "Data store saved. Its credentials are not shown again.",
    "datastore_reset": "Back to the default store.",
    "notifications": "Notification targets saved.",
    "test_sent": "Test notification queued for every target.",
    "signed_out": "You are signed out.",
    "2fa_expired": "That sign-in took too long (or was used already): sign in again.",
    "logo_set": "Logo saved.",
    "logo_removed": "Logo removed.",
    "request_approved": "Request approved: they are a member again and were told by e-mail.",
    "request_denied": "Request denied; they were told by e-mail.",
    "rejoin_sent": (
        "Request received. If you were a member of this organization and may rejoin, its "
        "admins will see your request and you will be told their answer."
    ),
}


# ------------------------------------------------------------------ formatting helpers


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M UTC")


def fmt_bytes(value: int | float | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop always returns


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        time=fmt_time,
        bytes=fmt_bytes,
        # api/format.py: the CLI shows the same quantities the same way.
        duration=fmt.duration,
        memory=fmt.memory_mb,
        pretty_json=to_json,
    )
    return env


ENV = _environment()


# ------------------------------------------------------------------ the org page context


@dataclass(frozen=True, slots=True)
class OrgPage:
    """A signed-in member looking at one organization's pages."""

    viewer: Viewer
    ctx: OrgContext
    session: Session

    @property
    def org(self) -> Organization:
        return self.ctx.org

    @property
    def role(self) -> Role:
        return self.ctx.role

    def can(self, permission: Permission | str) -> bool:
        return self.ctx.can(Permission(permission))

    def require(self, permission: Permission) -> None:
        """The REST route's `Requires(permission)`, for the page that does the same."""
        self.ctx.require(permission)

    def url(self, suffix: str = "") -> str:
        return f"/orgs/{self.ctx.org.slug}{suffix}"


def org_page(
    org: Annotated[str, PathParam(max_length=64)], viewer: ViewerDep, session: SessionDep
) -> OrgPage:
    # Non-members get the service's 404 (the page does not reveal the org exists).
    return OrgPage(
        viewer=viewer,
        ctx=member_context(session, org, viewer.user, token=viewer.token),
        session=session,
    )


OrgPageDep = Annotated[OrgPage, Depends(org_page)]


class PageRequires(Requires):
    """`Depends(PageRequires(Permission.x))`: the API's `Requires` for a page. The member
    signed in with the session cookie, and their role allows x; non-members get 404.

    Every page under /orgs/{org} declares its permission this way (not inside the body),
    so the route x role matrix reads it from the route, as it does for the API.
    """

    async def __call__(self, page: OrgPageDep) -> OrgPage:  # type: ignore[override]
        page.require(self.permission)
        return page


@dataclass
class Nav:
    """The sidebar: the org switcher and what the viewer's role may open."""

    orgs: list[tuple[Organization, str]]
    links: list[tuple[str, str, str]] = field(default_factory=list)  # (key, label, href)


def _nav(page: OrgPage) -> Nav:
    nav = Nav(orgs=list(organizations.list_mine(page.session, page.viewer.user)))
    links = [
        ("dashboard", "Dashboard", page.url()),
        ("members", "Members", page.url("/members")),
        ("teams", "Teams", page.url("/teams")),
        ("machines", "Machines", page.url("/machines")),
        ("projects", "Projects", page.url("/projects")),
        ("jobs", "Jobs", page.url("/jobs")),
        ("datasets", "Datasets", page.url("/datasets")),
    ]
    if page.can(Permission.settings_update):
        links.append(("settings", "Settings", page.url("/settings")))
    if page.can(Permission.secrets_manage):
        links.append(("secrets", "Secrets", page.url("/secrets")))
    if page.can(Permission.registries_manage):
        links.append(("registries", "Registries", page.url("/registries")))
    if page.can(Permission.storage_configure):
        links.append(("datastores", "Data stores", page.url("/datastores")))
    if page.can(Permission.audit_view):
        links.append(("audit", "Audit log", page.url("/audit")))
    if org_ui_access(page.ctx.viewer):
        # Opens in the same tab: the UI lives on this site (api/prefect_proxy/ui.py).
        links.append(("prefect", "Prefect UI", f"/prefect/{page.org.slug}/"))
    nav.links = links
    return nav


# ------------------------------------------------------------------ rendering


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def render(
    request: Request,
    template: str,
    *,
    viewer: Viewer | None = None,
    page: OrgPage | None = None,
    status_code: int = 200,
    active: str = "",
    **context: Any,
) -> HTMLResponse:
    """Render `template` with the layout's context; sets the anonymous CSRF cookie."""
    if page is not None:
        viewer = page.viewer
    token = csrf.token_for_request(request)
    notice_key = request.query_params.get("notice", "")
    html = ENV.get_template(template).render(
        request=request,
        viewer=viewer,
        page=page,
        org=page.org if page else None,
        nav=_nav(page) if page is not None and template_wants_nav(template) else None,
        org_has_logo=page is not None and logos.has_logo(page.session, page.org.id),
        active=active,
        csrf_token=token,
        csrf_field=csrf.CSRF_FIELD,
        hx_headers=Markup(json.dumps({csrf.CSRF_HEADER: token})),  # noqa: S704
        notice=NOTICES.get(notice_key),
        P=Permission,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
    fresh = csrf.cookie_to_set(request)
    if fresh is not None:
        response.set_cookie(csrf.CSRF_COOKIE, fresh, **csrf.set_cookie_args(request))  # type: ignore[arg-type]
    return response


def template_wants_nav(template: str) -> bool:
    # Fragments (htmx partial updates) render without the layout.
    return not template.startswith("_")


def redirect(url: str, *, notice: str | None = None, **params: str) -> RedirectResponse:
    """303 See Other after a POST (the browser then GETs `url`)."""
    query = {k: v for k, v in params.items() if v}
    if notice:
        query["notice"] = notice
    target = f"{url}?{urlencode(query)}" if query else url
    return RedirectResponse(target, status_code=303)


def safe_next(value: str | None, default: str = "/") -> str:
    """Only same-site paths: `//evil.example` or `https://...` would be an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def who_may_invite(org: Organization) -> str:
    return settings_doc.load(org.settings).invitations.who_may_invite
