"""ANDing the caller's scope into Prefect filter bodies.

A Prefect filter object combines its fields with its `operator` (`and_` by default). The
scope goes into one field (`id`, `flow_run_id`, `name`) as an `any_` list intersected
with whatever the caller asked for, so the server can only return objects inside it. An
`or_` operator would OR the scope with the caller's other criteria, so it is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from policies.errors import Invalid


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    sub = body.get(key)
    if sub is None:
        sub = body[key] = {}
    if not isinstance(sub, dict):
        raise Invalid(f"{key} must be a filter object.", field=key)
    if sub.get("operator", "and_") != "and_":
        raise Invalid(
            f"{key}.operator must be and_ through the Compute Share proxy: your scope is "
            "combined with the filter, and or_ would widen it.",
            field=f"{key}.operator",
        )
    return sub


def requested(body: dict[str, Any], key: str, field: str) -> list[str] | None:
    """The `any_` list the caller gave for `key.field`, or None when they gave none."""
    sub = body.get(key)
    if not isinstance(sub, dict):
        return None
    crit = sub.get(field)
    if not isinstance(crit, dict) or crit.get("any_") is None:
        return None
    values = crit["any_"]
    if not isinstance(values, list):
        raise Invalid(f"{key}.{field}.any_ must be a list.", field=f"{key}.{field}.any_")
    return [str(v) for v in values]


def as_uuids(values: Iterable[str]) -> list[uuid.UUID]:
    out = []
    for v in values:
        try:
            out.append(uuid.UUID(v))
        except ValueError:
            continue  # matches nothing in Prefect either
    return out


def narrow(body: dict[str, Any], key: str, field: str, allowed: Iterable[object]) -> None:
    """body[key][field] = {"any_": allowed, ...}: the caller's other criteria stay."""
    sub = _object(body, key)
    crit = sub.get(field)
    crit = dict(crit) if isinstance(crit, dict) else {}
    crit["any_"] = [str(v) for v in allowed]
    sub[field] = crit


def scoped(
    body: dict[str, Any],
    key: str,
    field: str,
    *,
    among: Callable[[list[str]], Sequence[object]],
    default: Callable[[], Sequence[object]],
) -> dict[str, Any]:
    """Scope `body[key][field]`: the ids the caller named, each checked (`among`), or
    else the caller's default scope (`default`)."""
    _object(body, key)  # refuse or_ before any lookup
    asked = requested(body, key, field)
    narrow(body, key, field, among(asked) if asked is not None else default())
    return body
