"""The one domain error hierarchy. `api/` maps each kind to an HTTP status.

Every error carries a short machine code (`error`) and a sentence for people (`detail`).
Nothing below `api/` knows about HTTP.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the product reports to a caller."""

    code = "error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class Unauthenticated(DomainError):
    """No credentials, or credentials that do not identify anyone (HTTP 401)."""

    code = "unauthenticated"


class NotFound(DomainError):
    """The thing does not exist, or the caller may not know it exists (HTTP 404)."""

    code = "not_found"


class Forbidden(DomainError):
    """Visible to the caller, but the caller's role may not do this (HTTP 403)."""

    code = "forbidden"


class Conflict(DomainError):
    """The request clashes with the current state (HTTP 409)."""

    code = "conflict"


class Invalid(DomainError):
    """The input is wrong; `field` names what (HTTP 422)."""

    code = "invalid"

    def __init__(self, detail: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.field = field


class LimitExceeded(DomainError):
    """A limit says no (HTTP 429)."""

    code = "limit_exceeded"


class TooLarge(DomainError):
    """What was sent would pass a size limit (HTTP 413); `used` and `limit` in bytes."""

    code = "too_large"

    def __init__(
        self,
        detail: str,
        *,
        used: int | None = None,
        limit: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail, code=code)
        self.used = used
        self.limit = limit


class Unavailable(DomainError):
    """A dependency (Prefect, storage) is not answering; safe to retry (HTTP 503)."""

    code = "unavailable"


class TooManyAttempts(LimitExceeded):
    """Too many tries (sign-ins, sign-ups, tokens); try again after `retry_after_s` (429)."""

    code = "too_many_attempts"

    def __init__(self, detail: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after_s = retry_after_s
