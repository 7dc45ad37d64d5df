"""The gates inbox's decision forms: a pending gate's buttons and edit inputs (one per
property of its input type's JSON Schema, or one JSON text), and a posted form read back
into the edited input, with what is wrong said per input.

Plain data in and out; the pages (`roost.console.pages`) render the forms and take the
posts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from roost.console import views

#: A form button's value: the decision it makes, and whether it takes the edited input.
BUTTONS = {"approve": ("approve", False), "reject": ("reject", False), "edit": ("edit", True),
           "done": ("done", False), "not_done": ("not_done", False),
           "abandon": ("abandon", False), "done-with-result": ("done", True)}
_FIELD_KINDS = {"string": "text", "integer": "integer", "number": "number", "boolean": "checkbox"}
_NAMED_FIELD = re.compile(r"\$\.([A-Za-z_][\w-]*)|required field `([^`]+)`")
_INPUT_PREFIX = re.compile(r"^the input does not fit [^:]*: ")
#: The deepest a decision's edited input (or an API decision body) may nest arrays and
#: objects: deeper data would exhaust the recursion of the decoders and pages that read it.
MAX_DEPTH = 100
_TOO_DEEP = f"nested more than {MAX_DEPTH} deep; give flatter data"


def too_deep(value: Any) -> bool:
    """Whether `value` nests lists and dicts more than `MAX_DEPTH` deep (counted a level at
    a time, without recursion)."""
    level = [value]
    for _ in range(MAX_DEPTH + 1):
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            return False
        level = [item for container in containers
                 for item in (container.values() if isinstance(container, dict) else container)]
    return True


def parse_json(text: str) -> tuple[Any, str | None]:
    """`text` parsed as JSON, or what is wrong with it, said for the input it came from."""
    try:
        value = json.loads(text)
    except RecursionError:  # nested deeper than the parser goes
        return None, _TOO_DEEP
    except ValueError as error:
        return None, f"not valid JSON: {error}"
    if too_deep(value):
        return None, _TOO_DEEP
    return value, None


def pretty(value: Any) -> str:
    """`value` as indented JSON, as the pages show data and an edit form holds it."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=repr)


class Field(msgspec.Struct):
    """One input of a gate's edit form, from its input type's JSON Schema.

    `kind` is text, integer, number, checkbox or json (a value of any other shape)."""

    name: str
    kind: str
    required: bool
    nullable: bool
    value: str = ""
    checked: bool = False
    error: str | None = None


class GateForm(msgspec.Struct):
    """A pending gate's decision form: its buttons, its edit inputs (per property, or one
    JSON text), the comment, and what was wrong with the last try."""

    buttons: list[tuple[str, str]]
    edit_button: tuple[str, str]
    fields: list[Field] | None
    json: str
    json_error: str | None
    comment: str
    error: str | None


class Failure(msgspec.Struct):
    """A decision that was not taken: which gate, why, and what was submitted."""

    run_id: str
    gate: str
    message: str
    field_errors: dict[str, str]
    form: Mapping[str, Any]


def _resolve(schema: Any, defs: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _resolve(defs.get(ref.rsplit("/", 1)[-1]), defs)
    return schema


def _types(schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return [kind for option in options for kind in _types(_resolve(option, defs), defs)]
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [str(k) for k in kind]
    if "enum" in schema and all(isinstance(item, str) for item in schema["enum"]):
        return ["string"]
    return []


def edit_fields(input_schema: Any) -> list[Field] | None:
    """One field per property when `input_schema` is an object with properties; else None
    (the edit is one JSON text)."""
    if not isinstance(input_schema, dict):
        return None
    defs = input_schema.get("$defs", {})
    schema = _resolve(input_schema, defs)
    properties = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(properties, dict) or not properties:
        return None
    required = set(schema.get("required", []))
    fields = []
    for name, property_schema in properties.items():
        kinds = _types(_resolve(property_schema, defs), defs)
        others = [kind for kind in kinds if kind != "null"]
        kind = _FIELD_KINDS.get(others[0], "json") if len(others) == 1 else "json"
        fields.append(Field(str(name), kind, name in required, "null" in kinds))
    return fields


def _shown_value(shown: Any, name: str) -> tuple[bool, Any]:
    """The value named `name` in what the gate shows (or one level down, as in
    `shown["arguments"]`)."""
    if not isinstance(shown, dict):
        return False, None
    for source in [shown, *(v for v in shown.values() if isinstance(v, dict))]:
        if name in source:
            return True, source[name]
    return False, None


def _prefilled(field: Field, shown: Any) -> Field:
    found, value = _shown_value(shown, field.name)
    if not found:
        return field
    if field.kind == "checkbox":
        return msgspec.structs.replace(field, checked=value is True)
    if field.kind == "text" and isinstance(value, str):
        return msgspec.structs.replace(field, value=value)
    if value is None:
        return field
    return msgspec.structs.replace(field, value=json.dumps(value, ensure_ascii=False))


def _submitted(field: Field, form: Mapping[str, Any], errors: dict[str, str]) -> Field:
    key = f"input.{field.name}"
    return msgspec.structs.replace(field, value=str(form.get(key, "")), checked=key in form,
                                   error=errors.get(field.name))


def gate_form(gate: views.GateView, failure: Failure | None = None) -> GateForm:
    """The decision form of pending gate `gate`, refilled from `failure` when its last
    decision was not taken."""
    outcome = gate.kind == "outcome"
    buttons = ([("done", "Done"), ("not_done", "Not done"), ("abandon", "Abandon")] if outcome
               else [("approve", "Approve"), ("reject", "Reject")])
    edit_button = ("done-with-result", "Done, with this result") if outcome \
        else ("edit", "Approve with these changes")
    fields = edit_fields(gate.input_schema)
    if failure is None:
        if fields is not None:
            fields = [_prefilled(field, gate.shown) for field in fields]
        text = ""
        if gate.kind == "review":
            text = pretty(gate.shown)
        elif gate.kind == "step" and isinstance(gate.shown, dict) and "arguments" in gate.shown:
            text = pretty(gate.shown["arguments"])
        return GateForm(buttons, edit_button, fields, text, None, "", None)
    errors = failure.field_errors
    if fields is not None:
        fields = [_submitted(field, failure.form, errors) for field in fields]
    return GateForm(buttons, edit_button, fields, str(failure.form.get("input_json", "")),
                    errors.get("input"), str(failure.form.get("comment", "")),
                    failure.message)


def _empty(field: Field) -> tuple[bool, Any, str | None]:
    """An empty input: left out when optional, null when it may be, else an error."""
    if not field.required:
        return False, None, None
    if field.nullable:
        return True, None, None
    return False, None, "required"


def _field_value(field: Field, raw: str, present: bool) -> tuple[bool, Any, str | None]:
    """`(keep, value, error)` of one submitted input, converted to its schema type."""
    if field.kind == "checkbox":
        return True, present, None
    if field.kind == "text":
        if raw == "" and field.nullable:
            return True, None, None
        return True, raw, None
    if not raw.strip():
        return _empty(field)
    if field.kind == "integer":
        try:
            return True, int(raw.strip()), None
        except ValueError:
            return False, None, f"{raw[:40]!r} is not a whole number"
    if field.kind == "number":
        try:
            number = float(raw.strip())
        except ValueError:
            return False, None, f"{raw[:40]!r} is not a number"
        if not math.isfinite(number):
            return False, None, f"{raw[:40]!r} is not a finite number"
        return True, int(number) if number.is_integer() and "." not in raw else number, None
    value, error = parse_json(raw)
    return error is None, value, error


def edited_input(gate: views.GateView, form: Mapping[str, Any]) -> tuple[Any, dict[str, str]]:
    """The edit a gate's form submits, converted per its input type, and the errors of
    the inputs that do not convert (by field name; `input` for the JSON text)."""
    fields = edit_fields(gate.input_schema)
    if fields is None:
        raw = str(form.get("input_json", ""))
        if not raw.strip():
            return None, {"input": "required: the edited input, as JSON"}
        edit, error = parse_json(raw)
        return edit, {} if error is None else {"input": error}
    value: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in fields:
        key = f"input.{field.name}"
        keep, converted, problem = _field_value(field, str(form.get(key, "")), key in form)
        if problem is not None:
            errors[field.name] = problem
        elif keep:
            value[field.name] = converted
    return value, errors


def field_error(gate: views.GateView, problem: str) -> tuple[str, str] | None:
    """The edit input a decision's problem names (`$.amount`, `required field `amount``),
    if the form has it, with the problem said for that input alone."""
    fields = edit_fields(gate.input_schema)
    if fields is None:
        return ("input", problem) if "input" in problem else None
    names = {field.name for field in fields}
    for match in _NAMED_FIELD.finditer(problem):
        name = match.group(1) or match.group(2)
        if name in names:
            alone = _INPUT_PREFIX.sub("", problem)
            alone = re.sub(rf"\s*-\s*at `\$\.{re.escape(name)}`|^\$\.{re.escape(name)}: ", "", alone)
            return name, alone
    return None
