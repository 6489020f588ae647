"""Operations endpoints, outside `/api/v1` and without authentication:

- `GET /healthz`: the process answers (liveness; no dependency is checked, so a
  database outage does not get every replica restarted at once), with the health of
  each background service (running, last success, consecutive failures, last error);
- `GET /readyz`: the database and Prefect both answer (readiness: take this replica out
  of the load balancer until they do); 503 `{"error": "not_ready", ...}` otherwise;
- `GET /metrics`: Prometheus text (see api.metrics), for a bearer `CSHARE_METRICS_TOKEN`
  (401 otherwise, unless `CSHARE_METRICS_OPEN`); not a user's token.

The same routes are also served under `/api/v1` (hidden from the schema) for clients
that put every call under the API prefix.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from api.metrics import CONTENT_TYPE, refusal, scrape_allowed
from flows.gateway import PrefectGateway
from orgs.config import Settings
from orgs.db import Database
from orgs.service import Service, ServiceHealth
from policies.errors import Unauthenticated

router = APIRouter(tags=["operations"])

# A probe must answer quickly even when Prefect hangs: its own short-timeout client.
PROBE_TIMEOUT_S = 3.0
_probe_lock = threading.Lock()


def _prefect_probe(request: Request) -> PrefectGateway:
    state = request.app.state
    with _probe_lock:
        probe: PrefectGateway | None = getattr(state, "prefect_probe", None)
        if probe is None:
            settings: Settings = state.settings
            auth = settings.prefect_auth_string
            probe = PrefectGateway(
                settings.prefect_api_url,
                auth.get_secret_value() if auth is not None else None,
                max_concurrency=2,
                retries=0,
                timeout=PROBE_TIMEOUT_S,
            )
            state.prefect_probe = probe
        return probe


@router.get("/healthz")
def healthz(request: Request) -> dict[str, Any]:
    """Liveness: the process is up and serving. Also each background service's health
    (a report only: a loop failing because a dependency is down is /readyz's business)."""
    services: list[Service] = getattr(request.app.state, "services", [])
    return {"status": "ok", "services": [_service_out(s.health()) for s in services]}


def _service_out(h: ServiceHealth) -> dict[str, Any]:
    return {
        "name": h.name,
        "enabled": h.enabled,
        "running": h.running,
        "interval_s": h.interval_s,
        "last_success_at": h.last_success_at.isoformat() if h.last_success_at else None,
        "consecutive_failures": h.consecutive_failures,
        "last_error": h.last_error,
        "last_error_at": h.last_error_at.isoformat() if h.last_error_at else None,
    }


def _check_database(request: Request) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        db: Database = request.app.state.db
        with db.session(write=False) as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"; the type says which
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _check_prefect(request: Request) -> dict[str, Any]:
    started = time.perf_counter()
    ok = _prefect_probe(request).health()
    result: dict[str, Any] = {"ok": ok, "ms": round((time.perf_counter() - started) * 1000, 1)}
    if not ok:
        result["error"] = "Prefect did not answer its health check with our credentials."
    return result


@router.get(
    "/readyz",
    responses={503: {"description": "A dependency is not reachable."}},
)
def readyz(request: Request) -> JSONResponse:
    """Readiness: the database and the Prefect server both answer."""
    checks = {"database": _check_database(request), "prefect": _check_prefect(request)}
    if all(c["ok"] for c in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, c in checks.items() if not c["ok"])
    return JSONResponse(
        {
            "status": "not_ready",
            "error": "not_ready",
            "detail": f"Not ready: {failing} not reachable.",
            "checks": checks,
        },
        status_code=503,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={401: {"description": "No metrics token, or a wrong one."}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format 0.0.4), for the metrics token."""
    settings: Settings = request.app.state.settings
    if not scrape_allowed(settings, request.headers.get("authorization")):
        raise Unauthenticated(refusal(settings))
    return Response(request.app.state.scrape_metrics(), media_type=CONTENT_TYPE)
