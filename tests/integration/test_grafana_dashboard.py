"""deploy/grafana/compute-share.json queries only series `/metrics` really exports.

Every `cshare_*` name in a panel query or a template variable must be an exported family,
or one of the sample names its type adds (`_total` for counters; `_bucket`, `_count` and
`_sum` for histograms); label names used in `by (...)` and selectors must be labels of
that family. A renamed metric or label breaks this test, not a dashboard in production.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

import flows.models as fm
from orgs import metrics as orgs_metrics
from orgs.db import Database
from orgs.models import Organization
from tests.integration.test_jobs_support import FakePrefect, jobs_app
from tests.support import insert_machine

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "compute-share.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
NAME = re.compile(r"\b(cshare_[a-z0-9_]+)\b")
# Labels a query names: in `by (...)`, and before `=`, `!=`, `=~`, `!~` in a selector.
BY = re.compile(r"\bby \(([^)]*)\)")
SELECTOR = re.compile(r"(cshare_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
BUILTIN_LABELS = {"le", "instance", "job"}


def _queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield value if isinstance(value, str) else str(value.get("query", ""))
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _queries(item)


def _exported(database: Database) -> dict[str, set[str]]:
    """Sample name -> its label names, for every sample a scrape can carry."""
    # Labelled counters show their label names once a child exists: one job end.
    orgs_metrics.record_job_end("completed", "dashboard-test", 0.001)
    with jobs_app(database, FakePrefect(), metrics_open=True) as api:
        api.client.get("/healthz")  # a timed request: the latency histogram has samples
        owner = api.signup()
        slug = api.create_org(owner)
        insert_machine(database, slug, owner.id)  # per-org machine series
        with database.transaction() as s:  # and per-org job series
            org_id = s.scalars(select(Organization.id).where(Organization.slug == slug)).one()
            s.add(
                fm.Job(
                    org_id=org_id,
                    user_id=uuid.UUID(owner.id),
                    machine_type="cpu",
                    state=fm.HELD,
                    memory_mb=512,
                    max_runtime_s=60,
                )
            )
        text = api.client.get("/metrics").text
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = {label for s in family.samples for label in s.labels}
        # Families with no child yet (labelled, nothing recorded) still name their type.
        for suffix in SUFFIXES.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set()).update(labels - {"le"})
    return out


def test_dashboard_queries_exported_series(sqlite_database: Database) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(_queries(dashboard))
    assert len(queries) >= 20
    exported = _exported(sqlite_database)
    used = {name for q in queries for name in NAME.findall(q)}
    assert used, "the dashboard queries no cshare_ series"
    missing = sorted(used - set(exported))
    assert not missing, f"the dashboard queries series /metrics does not export: {missing}"
    # The label names each query uses exist on what it selects.
    for q in queries:
        names = NAME.findall(q)
        known = set().union(*(exported[n] for n in names)) | BUILTIN_LABELS
        for group in BY.findall(q):
            for label in filter(None, (p.strip() for p in group.split(","))):
                assert label in known, f"{q!r}: no label {label!r}"
        for _name, matchers in SELECTOR.findall(q):
            for label in MATCHER.findall(matchers):
                assert label in known, f"{q!r}: no label {label!r}"


def test_dashboard_covers_the_operations_views() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = " ".join(_queries(dashboard))
    for needed in (
        "cshare_jobs",  # jobs by state
        'state="held"',  # the queue
        "cshare_dispatch_latency_seconds_bucket",
        "cshare_http_request_duration_seconds_count",  # request rate
        "cshare_http_request_duration_seconds_bucket",  # latency
        "cshare_org_jobs",  # per org
    ):
        assert needed in text, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
