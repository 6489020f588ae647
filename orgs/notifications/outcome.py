"""What one attempt to deliver came to (the outbox records it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status: int | None  # the HTTP status, when the transport tells it
    error: str
