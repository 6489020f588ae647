"""Request ids: in the `X-Request-ID` header, in every error body and on the server's log
lines for the request (in-process for the handlers, `cshare server` for the real logs)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agents.logsetup import JsonFormatter, RequestIdFilter
from tests.support import ApiClient

CSHARE = str(Path(sys.executable).parent / "cshare")
HEADER = "X-Request-ID"


def _same_id(r: httpx.Response) -> str:
    rid = r.headers[HEADER]
    assert r.json()["request_id"] == rid, r.text
    return rid


def test_error_bodies_carry_the_request_id(sqlite_api: ApiClient) -> None:
    api = sqlite_api
    # 401 (domain error), the caller's sane id kept.
    r = api.get("/me", headers={HEADER: "trace-42.a_b"})
    assert r.status_code == 401 and _same_id(r) == "trace-42.a_b"
    # 404 of an unknown route; an insane id replaced by one of ours.
    r = api.get("/no-such-thing", headers={HEADER: "bad id; drop table"})
    assert r.status_code == 404 and _same_id(r) != "bad id; drop table"
    # 422 of a malformed body.
    r = api.post("/auth/signup", json={"email": 3})
    assert r.status_code == 422 and r.json()["error"] == "invalid" and _same_id(r)
    # 405, and the web console's JSON errors.
    assert api.client.delete("/healthz").status_code == 405
    assert _same_id(api.client.delete("/healthz"))
    r = api.client.get("/no-such-page", headers={"Accept": "application/json"})
    assert r.status_code == 404 and _same_id(r)
    # Successes carry the header as well; each request its own id.
    ok = [api.client.get("/healthz").headers[HEADER] for _ in range(2)]
    assert ok[0] != ok[1]


@pytest.fixture
def server_log() -> Iterator[io.StringIO]:
    """The API's log lines, as the JSON setup writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cshare.api")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_a_server_error_has_the_id_of_its_log_line(
    sqlite_api: ApiClient, server_log: io.StringIO
) -> None:
    app = sqlite_api.client.app
    assert isinstance(app, FastAPI)

    def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/api/v1/test-boom", boom)
    r = sqlite_api.get("/test-boom", headers={HEADER: "boom-1"})
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert _same_id(r) == "boom-1"
    lines = [json.loads(line) for line in server_log.getvalue().splitlines()]
    [line] = [x for x in lines if x["message"] == "unhandled error"]
    assert line["request_id"] == "boom-1" and "kaboom" in line["exc_info"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_cshare_server_json_logs(tmp_path: Path, sqlite_template: Path) -> None:
    """`cshare server --log-format json`: every stderr line is a JSON object, and the access
    line of a failed request has the id of its header and body."""
    shutil.copy(sqlite_template, tmp_path / "cshare.db")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        CSHARE_HOME=str(tmp_path),
        CSHARE_DATABASE_URL=f"sqlite:///{tmp_path / 'cshare.db'}",
        CSHARE_DISPATCHER_ENABLED="false",
        CSHARE_NOTIFICATIONS_ENABLED="false",
        CSHARE_DATASET_GC_INTERVAL_S="0",
        CSHARE_LOG_FORMAT="text",  # the flag wins over the setting
    )
    stderr = (tmp_path / "stderr.log").open("wb")
    process = subprocess.Popen(
        [CSHARE, "server", "--port", str(port), "--log-format", "json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "stderr.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        r = httpx.get(url + "/api/v1/me", headers={HEADER: "from-client-7"})
        assert r.status_code == 401 and _same_id(r) == "from-client-7"
        r = httpx.get(url + "/api/v1/no-such-thing")
        generated = _same_id(r)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        stderr.close()
    lines = [json.loads(x) for x in (tmp_path / "stderr.log").read_text().splitlines() if x]
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    access = {x.get("request_id"): x for x in lines if x["logger"] == "uvicorn.access"}
    assert access["from-client-7"]["status"] == 401
    assert access["from-client-7"]["path"] == "/api/v1/me"
    assert access[generated]["status"] == 404


def test_the_cli_names_the_request_id_of_a_server_error() -> None:
    from api.cli.client import _api_error

    body = {"error": "internal", "detail": "Something went wrong.", "request_id": "r-9"}
    error = _api_error(httpx.Response(500, json=body, headers={HEADER: "r-9"}))
    assert error.hint is not None and "r-9" in error.hint
    assert _api_error(httpx.Response(404, json=body, headers={HEADER: "r-9"})).hint is None
