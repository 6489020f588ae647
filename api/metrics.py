"""Prometheus metrics of the API process: request latency, and `/metrics` rendering.

`/metrics` renders three sources in one text exposition:
- `orgs.metrics.REGISTRY`: counters and histograms recorded by the service code
  (submissions by decision and rule, dispatch latency, notification deliveries);
- `HTTP_REGISTRY`: request latency by route template, method and status class;
- gauges computed from the database at scrape time (`cshare_jobs`, `cshare_machines`),
  grouped counts on indexed columns (`LedgerCollector`: the open job states and the
  machines are exact on every scrape, the final job states are cached for 60 s). They
  count the whole control plane, so every replica reports the same values: aggregate
  them with `max()`, not `sum()`.

The route label is the route's template (`/api/v1/orgs/{org}/jobs`), never the concrete
path, and requests that match no route share the label "unmatched": a scanner probing
random URLs cannot create new series. There is no per-user label; per-org gauges
(`cshare_org_jobs`, `cshare_org_machines`) name at most `metrics_top_orgs` orgs, the
busiest, and fold the rest into org="other" (`OrgCollector`).

Who may scrape (`scrape_allowed`): a bearer `metrics_token`, or anyone when
`metrics_open`; `metrics_listen` adds a listener of its own (`MetricsListener`) for a
private network. docs/operations.md says how to configure Prometheus and Grafana.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orgs import metrics as orgs_metrics
from orgs import usage_views
from orgs.config import Settings
from orgs.db import Database

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

HTTP_REGISTRY: Final = CollectorRegistry(auto_describe=True)

REQUEST_LATENCY: Final = Histogram(
    "cshare_http_request_duration_seconds",
    "API request latency until the response is complete, by route template, method and "
    "status class.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=HTTP_REGISTRY,
)

# Scrapes and probes would otherwise dominate the latency histogram.
_NOT_TIMED: Final = frozenset(
    {"/metrics", "/healthz", "/readyz", "/api/v1/metrics", "/api/v1/healthz", "/api/v1/readyz"}
)


# The routers' prefix (api.app.API_PREFIX; not imported: api.app imports this module).
_API_PREFIX: Final = "/api/v1"


def _template(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not template:
        return "unmatched"
    # Newer FastAPI keeps included routers nested: the route's own path lacks the prefix.
    path = str(scope.get("path", ""))
    if path.startswith(_API_PREFIX + "/") and not template.startswith(_API_PREFIX + "/"):
        template = _API_PREFIX + template
    return str(template)


def _is_transfer(template: str) -> bool:
    """Dataset uploads and downloads: their time is the data's size, not a stall."""
    return template.endswith(("/download", "/versions"))


class RequestLatencyMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and adds a task per request)."""

    def __init__(self, app: ASGIApp, slow_after_s: float = 5.0) -> None:
        self.app = app
        self.slow_after_s = slow_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before the response starts is a server error

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            template = _template(scope)
            took = time.perf_counter() - start
            if template not in _NOT_TIMED:
                REQUEST_LATENCY.labels(
                    route=template, method=scope.get("method", ""), status=f"{status // 100}xx"
                ).observe(took)
            if took >= self.slow_after_s and not _is_transfer(template):
                # The route template, never the path: paths may hold ids and codes.
                log.warning(
                    "slow request: %s %s -> %d in %.1f s",
                    scope.get("method", ""),
                    template,
                    status,
                    took,
                )


# Final-state job counts are read at most this often per process (seconds).
FINAL_COUNTS_TTL_S: Final = 60.0


class LedgerCollector(Collector):
    """Gauges read from the database when scraped (one database per app).

    Every scrape reads, exactly: jobs in the open states (held, scheduled, running,
    cancelling; an index-only scan of the few rows in the partial `ix_jobs_org_open`) and
    machines by status. The final states (completed, failed, ...) are nearly the whole
    ledger, so counting them grows with its history (about 50 ms at 100,000 jobs); they
    are read at most every `final_ttl_s` seconds and repeated in between. A final-state gauge can
    therefore lag by up to that long (default 60 s: a few scrapes at the usual 15 s
    interval); these are slow-moving totals, and `rate()`-style alerts over them work on
    windows of minutes anyway. `final_ttl_s=0` reads them on every scrape.
    """

    def __init__(self, db: Database, *, final_ttl_s: float = FINAL_COUNTS_TTL_S) -> None:
        self.db = db
        self.final_ttl_s = final_ttl_s
        self._lock = threading.Lock()  # scrapes may run concurrently (thread pool)
        self._final: dict[str, int] | None = None
        self._final_read_at = 0.0

    def describe(self) -> Iterable[Metric]:
        return []  # no queries at registration time

    def _final_counts(self, session: Session) -> dict[str, int]:
        with self._lock:
            now = time.monotonic()
            if self._final is None or now - self._final_read_at >= self.final_ttl_s:
                self._final = usage_views.jobs_by_state(session, usage_views.FINAL_STATES)
                self._final_read_at = now
            return dict(self._final)

    def collect(self) -> Iterable[Metric]:
        with self.db.session(write=False) as session:
            by_state = usage_views.jobs_by_state(session, usage_views.OPEN_STATES)
            by_state.update(self._final_counts(session))
            by_status = usage_views.machines_by_status(session)
        jobs = GaugeMetricFamily(
            "cshare_jobs",
            "Jobs in the ledger by state (all organizations). Final states are refreshed "
            f"at most every {self.final_ttl_s:g} s.",
            labels=["state"],
        )
        for state, n in sorted(by_state.items()):
            jobs.add_metric([state], n)
        machines = GaugeMetricFamily(
            "cshare_machines",
            "Machines by status; approved machines split into online and offline.",
            labels=["status"],
        )
        for status, n in sorted(by_status.items()):
            machines.add_metric([status], n)
        return [jobs, machines]


class OrgCollector(Collector):
    """Per-org gauges read when scraped, with bounded labels: open jobs by state and
    machines by status, for the `top` busiest orgs (open jobs, then online machines)
    by slug, every other org added into org="other" (absent while there is none)."""

    def __init__(self, db: Database, *, top: int) -> None:
        self.db = db
        self.top = top

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        with self.db.session(write=False) as session:
            open_jobs = usage_views.open_jobs_by_org(session)
            machines = usage_views.machines_by_org(session)
        activity = {
            slug: sum(open_jobs.get(slug, {}).values()) + machines.get(slug, {}).get("online", 0)
            for slug in set(open_jobs) | set(machines)
        }
        label = orgs_metrics.org_labels(activity, self.top)
        jobs = GaugeMetricFamily(
            "cshare_org_jobs",
            f"Open jobs by organization and state (the {self.top} busiest organizations by "
            'name, the others summed as org="other").',
            labels=["org", "state"],
        )
        machine_family = GaugeMetricFamily(
            "cshare_org_machines",
            "Machines by organization and status (organizations labelled as in cshare_org_jobs).",
            labels=["org", "status"],
        )
        for family, source in ((jobs, open_jobs), (machine_family, machines)):
            folded: dict[tuple[str, str], int] = {}
            for slug, counts in source.items():
                for key, n in counts.items():
                    folded[(label[slug], key)] = folded.get((label[slug], key), 0) + n
            for (org, key), n in sorted(folded.items()):
                family.add_metric([org, key], n)
        return [jobs, machine_family]


def make_scrape(db: Database, *, top_orgs: int = 20) -> Callable[[], bytes]:
    """A function rendering every metric of this app as Prometheus text."""
    ledger = CollectorRegistry(auto_describe=False)
    ledger.register(LedgerCollector(db))
    ledger.register(OrgCollector(db, top=top_orgs))

    def scrape() -> bytes:
        return (
            generate_latest(orgs_metrics.REGISTRY)
            + generate_latest(HTTP_REGISTRY)
            + generate_latest(ledger)
        )

    return scrape


def scrape_allowed(settings: Settings, authorization: str | None) -> bool:
    """Whether a scrape with this `Authorization` header may read the metrics."""
    token = settings.metrics_token
    if token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        )
    return settings.metrics_open


def refusal(settings: Settings) -> str:
    """What a refused scrape is told (never whether a token is close)."""
    if settings.metrics_token is not None:
        return "Send the metrics token: 'Authorization: Bearer <CSHARE_METRICS_TOKEN>'."
    where = (
        f" or scrape the metrics listener on {settings.metrics_listen}"
        if settings.metrics_listen
        else ""
    )
    return (
        "Metrics need a token: set CSHARE_METRICS_TOKEN and send it as a bearer token"
        f"{where}; CSHARE_METRICS_OPEN=true serves them to anyone."
    )


class MetricsListener:
    """`/metrics` alone on an address of its own (`metrics_listen`), for a network only
    Prometheus reaches; a thread per scrape. The token applies here too when set."""

    def __init__(self, settings: Settings, scrape: Callable[[], bytes]) -> None:
        address = settings.metrics_address()
        assert address is not None
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self._send(404, b'{"error":"not_found","detail":"Only /metrics here."}')
                elif settings.metrics_token is not None and not scrape_allowed(
                    settings, self.headers.get("Authorization")
                ):
                    detail = refusal(settings).replace('"', "'")
                    self._send(401, f'{{"error":"unauthenticated","detail":"{detail}"}}'.encode())
                else:
                    self._send(200, listener.scrape(), CONTENT_TYPE)

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every 15 s would flood the log

        self.scrape = scrape
        self.server = ThreadingHTTPServer(address, Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="metrics-listener", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics listener on %s:%d", *self.address)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Re-exported so callers in api/ can record without reaching into orgs.
record_submission = orgs_metrics.record_submission
observe_dispatch_latency = orgs_metrics.observe_dispatch_latency
