"""The FastAPI application: routers under /api/v1, error mapping, schema upgrade on start."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import errors, metrics, prefect_proxy, web
from api.job_credentials import refuse_job_tokens
from api.request_ids import RequestIdMiddleware
from api.routers import (
    accounts,
    agent,
    audit,
    bundles,
    datasets,
    invitations,
    job_tracking,
    lineage,
    machine_types,
    machines,
    operations,
    org_profile,
    organizations,
    overview,
    project_git,
    projects,
    registries,
    secrets,
    sso,
    teams,
)
from api.routers import deployments as deployment_routes
from api.routers import jobs as job_routes
from api.routers import schedules as schedule_routes
from api.routers import settings as settings_routes
from api.routers import two_factor as two_factor_routes
from api.schemas import ErrorOut
from flows import wiring
from flows.gateway import PrefectGateway
from flows.jobs import AdmissionRejected
from flows.prefect_access import gateway_from_settings
from orgs import migrate
from orgs.config import Settings, get_settings
from orgs.db import Database
from orgs.rate_limits import RateLimits

log = logging.getLogger("cshare.api")

API_PREFIX = "/api/v1"

# The errors any route may answer with (body: ErrorOut), documented once for all routers.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "The body could not be parsed (e.g. not UTF-8)."),
        (401, "No token, or a bad, expired or revoked one."),
        (403, "Visible to you, but your role may not do this."),
        (404, "Not found, or not visible to you."),
        (409, "Conflicts with the current state."),
        (422, "Invalid input."),
        (429, "A limit says no."),
    )
}


def create_app(
    settings: Settings | None = None,
    database: Database | None = None,
    gateway: PrefectGateway | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    db = database or Database(settings.resolved_database_url())
    # The one Prefect gateway of this process (its concurrency bound is per gateway).
    prefect = gateway or gateway_from_settings(settings)
    # Cascade and input hooks: needed by requests whether or not the lifespan runs.
    wiring.wire_hooks()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate.upgrade(db.engine)
        # The background loops (flows.wiring lists them), reported by /healthz.
        services = wiring.services(db, prefect, settings)
        app.state.services = services
        for service in services:
            service.start()
        listener = None
        if settings.metrics_listen:
            listener = metrics.MetricsListener(settings, app.state.scrape_metrics)
            listener.start()
        app.state.metrics_listener = listener
        if settings.gc_freeze:
            # Move the ~200k start-up objects out of the collector's reach: full
            # collections over them were the p99 of every endpoint (bench/overview.py).
            gc.collect()
            gc.freeze()
        yield
        await app.state.prefect_proxy.upstream.aclose()
        if listener is not None:
            listener.stop()
        for service in reversed(services):
            service.stop()
        app.state.services = []
        if gateway is None:
            prefect.close()
        if database is None:
            db.dispose()

    app = FastAPI(
        title="Compute Share",
        version="0.1.0",
        description="Pool an organization's machines and run Prefect flows on them.",
        lifespan=lifespan,
        # Job tokens are refused everywhere but the few routes that name what for.
        dependencies=[Depends(refuse_job_tokens)],
    )
    app.state.settings = settings
    app.state.db = db
    app.state.services = []
    app.state.rate_limits = RateLimits(settings)
    app.state.trusted_proxies = settings.trusted_proxy_networks()
    # Request handlers get the budgeted, urgent view; the dispatcher the gateway itself.
    app.state.gateway = prefect.for_requests(settings.prefect_request_budget_s)
    errors.install(app)
    app.add_exception_handler(AdmissionRejected, job_routes.admission_rejected_handler)
    app.state.scrape_metrics = metrics.make_scrape(db, top_orgs=settings.metrics_top_orgs)
    app.add_middleware(metrics.RequestLatencyMiddleware, slow_after_s=settings.slow_request_s)
    # Added last, so outermost: the slow-request line carries the request id too.
    app.add_middleware(RequestIdMiddleware)
    routers = (
        accounts,
        two_factor_routes,
        sso,
        organizations,
        org_profile,
        teams,
        invitations,
        settings_routes,
        secrets,
        registries,
        audit,
        overview,
        machines,
        machine_types,
        agent,
        deployment_routes,
        projects,
        project_git,
        job_tracking,  # before job_routes: `jobs/compare` is not a job id
        job_routes,
        schedule_routes,
        datasets,
        bundles,
        lineage,
    )
    for router in (r.router for r in routers):
        app.include_router(router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    # /healthz, /readyz, /metrics at the root (probes, Prometheus) and under the prefix.
    app.include_router(operations.router)
    app.include_router(operations.router, prefix=API_PREFIX, include_in_schema=False)
    # The Prefect API behind the control plane (api/prefect_proxy): same server, same
    # secret as the gateway, which never leaves this process.
    prefect_proxy.install(app, db, prefect.api_url, getattr(prefect, "auth_string", None))
    # The web console at / (and its assets at /static), behind every API route and
    # outside the OpenAPI schema; see api/web/app.py.
    web.install(app)

    return app
