"""The organization's limits document: schema, defaults, parsing with clear errors.

Admins edit this as YAML (``PUT /orgs/{org}/settings`` with ``application/yaml``) or JSON.
Every problem is reported as ``policies.errors.Invalid`` whose ``field`` is the dotted key
path (``organization.limits.max_job_runtime``), so the API and CLI can point at it.

Validation is strict on purpose: ``"10"``, ``10.0`` or ``true`` are not integers here. A
limits document is edited rarely and read on every submission, so a silent coercion or a
typo'd key that is ignored would quietly change who may run what.

Omitted keys take the defaults below. ``machine_types``, when given, replaces the default
set (``cpu`` only) instead of merging with it, so an admin can remove a type.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Sequence
from typing import Annotated, Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic_core import ErrorDetails

from policies.errors import Invalid

__all__ = [
    "DEFAULT_LIMITS",
    "MACHINE_TYPE_PATTERN",
    "MAX_DOCUMENT_CHARS",
    "Limits",
    "LimitsDocument",
    "MachineTypeLimits",
    "OrganizationLimits",
    "parse_limits",
    "parse_limits_yaml",
]

# No "-": pool names are "<org slug>-<type>", so the type must not contain the separator.
MACHINE_TYPE_PATTERN: Final = r"^[a-z][a-z0-9_]{0,31}$"
# A real document is a few hundred bytes; the cap keeps parsing cheap and bounded.
MAX_DOCUMENT_CHARS: Final = 64 * 1024

# Upper bounds: far above any real setting, low enough to catch unit mistakes
# (milliseconds for seconds, bytes for MB) and values that overflow a DB integer.
_MAX_RUNTIME_S: Final = 30 * 24 * 3600  # 30 days
_MAX_MEMORY_MB: Final = 16 * 1024 * 1024  # 16 TiB
_MAX_CONCURRENCY: Final = 100_000
_MAX_QUEUED: Final = 1_000_000
_MAX_MACHINES: Final = 10_000

MachineTypeName = Annotated[str, StringConstraints(pattern=MACHINE_TYPE_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Limits(_Strict):
    """Per-user limits and per-job maxima. Job maxima are also the defaults for a job."""

    max_machines_per_user: int = Field(10, ge=1, le=_MAX_MACHINES)
    max_concurrent_jobs_per_user: int = Field(20, ge=1, le=_MAX_CONCURRENCY)
    max_queued_jobs_per_user: int = Field(500, ge=1, le=_MAX_QUEUED)
    max_job_runtime: int = Field(86_400, ge=1, le=_MAX_RUNTIME_S, description="seconds")
    max_job_memory: int = Field(65_536, ge=1, le=_MAX_MEMORY_MB, description="MB")


class MachineTypeLimits(_Strict):
    """Caps for one machine type: across the organization and per user (active jobs)."""

    max_scale: int = Field(ge=1, le=_MAX_CONCURRENCY)
    per_user_quota: int = Field(ge=1, le=_MAX_CONCURRENCY)


def _default_machine_types() -> dict[str, MachineTypeLimits]:
    return {"cpu": MachineTypeLimits(max_scale=100, per_user_quota=20)}


class OrganizationLimits(_Strict):
    limits: Limits = Field(default_factory=Limits)
    # Frozen stops reassignment; callers must still treat the dict as read-only.
    machine_types: dict[MachineTypeName, MachineTypeLimits] = Field(
        default_factory=_default_machine_types, min_length=1
    )


class LimitsDocument(_Strict):
    """The whole document: ``{"organization": {"limits": {...}, "machine_types": {...}}}``."""

    organization: OrganizationLimits = Field(default_factory=OrganizationLimits)

    @property
    def limits(self) -> Limits:
        return self.organization.limits

    @property
    def machine_types(self) -> dict[str, MachineTypeLimits]:
        return self.organization.machine_types

    def to_yaml(self) -> str:
        """YAML that ``parse_limits_yaml`` reads back to an equal document."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


DEFAULT_LIMITS: Final = LimitsDocument()


# --------------------------------------------------------------------------- parsing


def parse_limits(data: object) -> LimitsDocument:
    """Validate already-decoded data (JSON body, ``model_dump()`` output, YAML result)."""
    return _validate(data, text=None)


def parse_limits_yaml(text: str) -> LimitsDocument:
    """Parse and validate YAML text; errors carry the key path and, if known, the line."""
    if len(text) > MAX_DOCUMENT_CHARS:
        raise Invalid(
            f"The limits document is too large ({len(text)} characters, "
            f"at most {MAX_DOCUMENT_CHARS}).",
            field=None,
        )
    try:
        data = yaml.load(text, Loader=_NoDuplicatesLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        raise Invalid(_yaml_error_sentence(exc), field=None) from None
    except yaml.YAMLError as exc:  # no position available
        raise Invalid(f"The limits document is not valid YAML: {exc}.", field=None) from None
    except RecursionError:  # e.g. "[[[[...": PyYAML recurses per nesting level
        raise Invalid("The limits document is nested too deeply.", field=None) from None
    if data is None:
        raise Invalid(
            "The limits document is empty; expected a mapping with the key 'organization'.",
            field=None,
        )
    return _validate(data, text=text)


def _validate(data: object, *, text: str | None) -> LimitsDocument:
    if isinstance(data, LimitsDocument):
        return data
    if not isinstance(data, dict):
        raise Invalid(
            "The limits document must be a mapping with the key 'organization', "
            f"got {_type_name(data)}.",
            field=None,
        )
    try:
        return LimitsDocument.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        path, message = _describe(errors[0])
        where = _locate(text, path) if text is not None else None
        if where is not None:
            message += f" (line {where[0]}, column {where[1]})"
        if len(errors) > 1:
            more = len(errors) - 1
            message += f"; {more} more problem{'s' if more > 1 else ''} after this one"
        raise Invalid(message + ".", field=".".join(str(p) for p in path) or None) from None


# ------------------------------------------------------------------ YAML helpers


class _NoDuplicatesLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping.

    PyYAML keeps the last value silently; in a limits file that hides an edit.
    Keys brought in by a merge (``<<: *base``) may be overridden as YAML intends.
    """


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Hashable] = set()
    for key_node, _value in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            continue  # the base constructor reports unhashable keys itself
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_NoDuplicatesLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _yaml_error_sentence(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or exc.context or "syntax error"
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"The limits document is not valid YAML: {problem}{where}."


def _locate(text: str, path: Sequence[str | int]) -> tuple[int, int] | None:
    """1-based (line, column) of the deepest key of `path` found in the YAML text."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    found: tuple[int, int] | None = None
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                found = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                node = value_node
                break
        else:
            break
    return found


# ------------------------------------------------------------ error formatting


def _describe(err: ErrorDetails) -> tuple[tuple[str | int, ...], str]:
    """Turn one pydantic error into (key path, sentence without the final period)."""
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if loc and loc[-1] == "[key]":  # a bad machine type name
        path, name = loc[:-1], err.get("input")
        if not isinstance(name, str):
            return path, (
                f"Machine type names must be strings{_shown(name)}; quote names that YAML "
                "reads as numbers or booleans (such as on, no, 1)"
            )
        return path, (
            f"Machine type name {name!r} is invalid: use 1 to 32 lowercase letters, digits "
            "or '-', starting with a letter"
        )
    dotted = ".".join(str(p) for p in loc)
    got = _shown(err.get("input"))
    if kind == "extra_forbidden":
        parent, key = loc[:-1], loc[-1]
        allowed = _allowed_keys(parent)
        hint = ""
        close = difflib.get_close_matches(str(key), allowed, n=1)
        if close:
            hint = f" (did you mean '{close[0]}'?)"
        elif allowed:
            hint = f" (allowed keys: {', '.join(allowed)})"
        where = f"in {'.'.join(str(p) for p in parent)}" if parent else "at the top level"
        return loc, f"Unknown key '{key}' {where}{hint}"
    if kind == "greater_than_equal":
        return loc, f"{dotted} must be a positive integer (at least {ctx.get('ge')}){got}"
    if kind == "less_than_equal":
        unit = _unit(loc)
        return loc, f"{dotted} must be at most {ctx.get('le')}{unit}{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return loc, f"{dotted} must be an integer{got}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return loc, f"{dotted} must be a mapping, got {_type_name(err.get('input'))}"
    if kind == "too_short" and loc and loc[-1] == "machine_types":
        return loc, f"{dotted} must define at least one machine type"
    if kind == "missing":
        return loc, f"{dotted} is required"
    return loc, f"{dotted}: {err['msg']}"


def _allowed_keys(parent: Sequence[str | int]) -> list[str]:
    """Keys valid where an unknown key was found (for the "did you mean" hint)."""
    where = tuple(str(p) for p in parent)
    model: type[BaseModel] | None = None
    if where == ():
        model = LimitsDocument
    elif where == ("organization",):
        model = OrganizationLimits
    elif where == ("organization", "limits"):
        model = Limits
    elif len(where) == 3 and where[:2] == ("organization", "machine_types"):
        model = MachineTypeLimits
    return list(model.model_fields) if model is not None else []


def _unit(loc: Sequence[str | int]) -> str:
    if len(loc) == 3 and loc[:2] == ("organization", "limits"):
        field = Limits.model_fields.get(str(loc[2]))
        if field is not None and field.description:
            return f" {field.description}"
    return ""


def _shown(value: object) -> str:
    """', got X' for short scalars only: never repr arbitrary (possibly huge) input."""
    if isinstance(value, bool | int | float) or value is None:
        return f", got {value!r}"
    if isinstance(value, str) and len(value) <= 40:
        return f", got the string {value!r}"
    return f", got {_type_name(value)}"


def _type_name(value: object) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number with a fraction",
        type(None): "nothing (null)",
    }.get(type(value), f"a {type(value).__name__}")
