"""A form generated from a flow's parameter schema (the JSON schema Prefect makes, stored
with the deployment), and the parameters read back from what the browser sent.

Each property becomes one field: integers, numbers and strings an input, booleans a
checkbox, enums a select, lists and objects a JSON text area. Values arrive as text, so
they are converted here by the field's kind; whether they are *valid* is then decided by
`flows.deployments.validate_parameters`, as for a submission through the API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flows.deployments import validate_parameters
from policies.errors import Invalid

FIELD_PREFIX = "p."  # form names of parameters, apart from the form's own fields

_KINDS = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}


@dataclass(frozen=True)
class ParamField:
    name: str
    label: str
    kind: str  # int | float | str | bool | enum | json
    required: bool
    help: str
    value: str  # what the control shows (defaults filled)
    options: tuple[str, ...] = ()
    nullable: bool = False

    @property
    def form_name(self) -> str:
        return FIELD_PREFIX + self.name

    @property
    def dom_id(self) -> str:
        return "param-" + "".join(c if c.isalnum() else "-" for c in self.name)


def _resolve(schema: Mapping[str, Any], prop: Mapping[str, Any]) -> dict[str, Any]:
    """The property with a lone `$ref`/`allOf: [$ref]` (Prefect's enums, models) inlined
    and `anyOf: [X, null]` (an Optional) read as X."""
    out = dict(prop)
    refs = [out.pop("$ref")] if "$ref" in out else []
    all_of = out.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], Mapping):
        refs += [all_of[0].get("$ref")]
        out.pop("allOf")
    for ref in refs:
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = schema
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, Mapping) else {}
            if isinstance(target, Mapping):
                out = {**target, **out}
    any_of = out.get("anyOf")
    if isinstance(any_of, list):
        kept = [a for a in any_of if isinstance(a, Mapping) and a.get("type") != "null"]
        if len(kept) == 1 and len(kept) < len(any_of):
            out.pop("anyOf")
            out = {**_resolve(schema, kept[0]), **out, "nullable": True}
    return out


def _kind(prop: Mapping[str, Any]) -> str:
    if isinstance(prop.get("enum"), list) and prop["enum"]:
        return "enum"
    kind = prop.get("type")
    if isinstance(kind, list):  # ["integer", "null"]
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    return _KINDS.get(kind, "json") if isinstance(kind, str) else "json"


def _shown(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value is True else ""
    if kind in ("int", "float", "str", "enum") and not isinstance(value, list | dict):
        return str(value)
    return json.dumps(value, indent=2)


def fields_for(
    schema: Mapping[str, Any], defaults: Mapping[str, Any], sent: Mapping[str, str] | None = None
) -> list[ParamField]:
    """The form's fields in the flow's order (Prefect's `position`); values from `sent`
    (a form sent back) or else the deployment's defaults, then the schema's."""
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return []
    required = set(schema.get("required") or ())
    ordered = sorted(
        props.items(),
        key=lambda kv: (
            kv[1].get("position", 1_000) if isinstance(kv[1], Mapping) else 1_000,
            kv[0],
        ),
    )
    out = []
    for name, raw in ordered:
        prop = _resolve(schema, raw if isinstance(raw, Mapping) else {})
        kind = _kind(prop)
        if sent is not None:
            value = sent.get(FIELD_PREFIX + name, "")
        else:
            default = defaults.get(name, prop.get("default"))
            value = _shown(kind, default)
        label = str(prop.get("title") or name.replace("_", " ").capitalize())
        out.append(
            ParamField(
                name=name,
                label=label,
                kind=kind,
                # A default from the deployment satisfies the flow's "required".
                required=name in required and name not in defaults,
                help=str(prop.get("description") or ""),
                value=value,
                options=tuple(str(o) for o in prop.get("enum") or ()),
                nullable=bool(prop.get("nullable")),
            )
        )
    return out


def _convert(field: ParamField, text: str, prop: Mapping[str, Any]) -> Any:
    if field.kind == "bool":
        return text == "true"
    if field.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise Invalid("Enter a whole number.") from None
    if field.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise Invalid("Enter a number.") from None
    if field.kind == "enum":
        # The enum's own value (Prefect's enums may be numbers).
        for option in prop.get("enum") or ():
            if str(option) == text:
                return option
        raise Invalid(f"Choose one of: {', '.join(field.options)}.")
    if field.kind == "str":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid(f"Not valid JSON: {exc.msg} (line {exc.lineno}).") from None


def read_parameters(
    schema: Mapping[str, Any], defaults: Mapping[str, Any], form: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(parameters, errors by parameter name) from the sent form. An empty field is left
    out (the deployment's or the flow's default applies); every field is checked by
    `validate_parameters`, so each error is shown beside its own field."""
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return {}, {}
    params: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in fields_for(schema, defaults, form):
        prop = _resolve(schema, props.get(field.name) or {})
        text = field.value if field.kind == "json" else field.value.strip()
        if field.kind != "bool" and not text.strip():
            continue
        try:
            value = _convert(field, text, prop)
            validate_parameters(schema, {field.name: value}, complete=False)
        except Invalid as exc:
            errors[field.name] = exc.detail
            continue
        params[field.name] = value
    for name in schema.get("required") or ():
        if name not in params and name not in defaults and name not in errors:
            errors[str(name)] = "Required."
    if not errors:
        try:  # the whole set, as the submission will check it
            validate_parameters(schema, {**defaults, **params})
        except Invalid as exc:
            key = (exc.field or "").removeprefix("parameters.").split(".")[0]
            errors[key or "_"] = exc.detail
    return params, errors
