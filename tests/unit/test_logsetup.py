"""The shared logging setup (agents/logsetup.py): request ids, JSON lines, text lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agents.logsetup import (
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    accept_request_id,
    dict_config,
    request_id,
)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("A.b_c-9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        (None, False),
        ("has space", False),
        ("new\nline", False),
        ('quote"', False),
        ("ünï", False),
    ],
)
def test_request_id_is_kept_only_when_sane(given: str | None, kept: bool) -> None:
    got = accept_request_id(given)
    if kept:
        assert got == given
    else:
        assert got != given and len(got) == 32 and got.isalnum()


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("cshare.test.logsetup")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines(captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    token = request_id.set("req-1")
    try:
        logger.warning("moved %d jobs", 3, extra={"org": "acme"})
    finally:
        request_id.reset(token)
    logger.info("outside a request")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3  # the traceback stays inside its line
    first, second, third = lines
    assert first["level"] == "WARNING" and first["logger"] == "cshare.test.logsetup"
    assert first["message"] == "moved 3 jobs"
    assert first["request_id"] == "req-1" and first["org"] == "acme"
    assert first["ts"].endswith("+00:00")
    assert "request_id" not in second
    assert "RuntimeError: boom" in third["exc_info"]


def test_text_lines(captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter())
    token = request_id.set("req-2")
    try:
        logger.info("hello", extra={"org": "acme"})
    finally:
        request_id.reset(token)
    line = stream.getvalue().strip()
    assert line.endswith("INFO    cshare.test.logsetup [req-2] hello org=acme")


def test_dict_config_routes_uvicorn_through_the_one_handler() -> None:
    config = dict_config("json", "warning")
    assert config["root"] == {"level": "WARNING", "handlers": ["cshare"]}
    assert config["formatters"]["cshare"]["()"] is JsonFormatter
    assert config["handlers"]["cshare"]["filters"] == ["request_id"]
    assert config["loggers"]["uvicorn"] == {"level": "WARNING", "handlers": [], "propagate": True}
    assert config["disable_existing_loggers"] is False
    assert dict_config()["formatters"]["cshare"]["()"] is TextFormatter
