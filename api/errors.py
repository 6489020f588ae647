"""The one place where domain errors become HTTP: `{"error": code, "detail": sentence,
"request_id": id}` (the id also in the `X-Request-ID` header and the server's log lines)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.logsetup import request_id
from api import request_ids
from policies.errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    LimitExceeded,
    NotFound,
    TooLarge,
    TooManyAttempts,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("cshare.api")

STATUS: dict[type[DomainError], int] = {
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Invalid: 422,
    LimitExceeded: 429,
    Unavailable: 503,
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "limit_exceeded",
}


def status_for(exc: DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_body(code: str, detail: str, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"error": code, "detail": detail, **extra}
    rid = request_id.get()
    if rid is not None:
        body["request_id"] = rid
    return body


def _loc(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_request: Request, exc: DomainError) -> JSONResponse:
        extra: dict[str, object] = {}
        if isinstance(exc, Invalid) and exc.field:
            extra["field"] = exc.field
        headers: dict[str, str] | None = None
        if isinstance(exc, Unauthenticated):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, TooManyAttempts):
            headers = {"Retry-After": str(exc.retry_after_s)}
        if isinstance(exc, TooLarge) and exc.limit is not None:
            extra.update(used_bytes=exc.used, limit_bytes=exc.limit)
        return JSONResponse(
            error_body(exc.code, exc.detail, **extra), status_code=status_for(exc), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "Invalid request."}
        field = _loc(tuple(first.get("loc", ())))
        detail = f"{field}: {first.get('msg', 'invalid value')}"
        fields = [
            {"field": _loc(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
            for e in errors[:20]
        ]
        return JSONResponse(
            error_body("invalid", detail, field=field, fields=fields), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError) -> JSONResponse:
        if "database is locked" not in str(exc.orig):
            return await _unexpected(request, exc)
        # SQLite's write lock stayed busy past busy_timeout: nothing was written (the
        # transaction rolled back), so the client may simply retry.
        log.warning("database busy: %s", exc.orig)
        return JSONResponse(
            error_body("database_busy", "The database is busy; retry in a few seconds."),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette calls this outside every middleware: the id comes from the request.
        rid = request_ids.adopt(request)
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal", "Something went wrong on the server; it has been logged."),
            status_code=500,
            headers={request_ids.HEADER: rid} if rid else None,
        )
