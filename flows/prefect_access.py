"""Building the control plane's one Prefect gateway from settings (once per app)."""

from __future__ import annotations

import httpx

from flows.gateway import PrefectGateway
from orgs.config import Settings


def gateway_from_settings(
    settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> PrefectGateway:
    """A gateway for `settings.prefect_api_url`. Creating it opens no connection."""
    auth = settings.prefect_auth_string
    return PrefectGateway(
        settings.prefect_api_url,
        auth.get_secret_value() if auth is not None else None,
        max_concurrency=settings.prefect_max_concurrency,
        retries=settings.prefect_retries,
        transport=transport,
    )


def ui_url_for_flow_run(settings: Settings, org_slug: str, flow_run_id: object) -> str:
    """The Prefect UI page of a run: the org's UI behind the console's login
    (`/prefect/<org>/`, docs/security.md), or under `prefect_ui_url` when an operator
    set one."""
    base = settings.prefect_ui_url or f"{settings.public_url.rstrip('/')}/prefect/{org_slug}"
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"
