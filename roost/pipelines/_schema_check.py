"""Checking plain data against the JSON Schema msgspec makes for a gate's `input_type`.

A decision made where the pipeline's types are not loaded (`roost decide`) is checked
against the schema stored with the gate; the run decodes it exactly with the type
when it resumes. Only what `msgspec.json.schema` emits is understood: `$ref`/`$defs`,
`type`, `enum`, `const`, `anyOf`/`oneOf`, object `properties`/`required`/
`additionalProperties`, array `items`/`prefixItems`, and the numeric, length and
pattern bounds.
"""

from __future__ import annotations

import re
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "null": (type(None),), "number": (int, float), "integer": (int,)}


def problems(schema: dict[str, Any], value: Any) -> list[str]:
    """What is wrong with `value` under `schema`: one line per problem, each naming where
    (`$.to.addr`); empty when it fits."""
    found: list[str] = []
    _check(schema, schema.get("$defs", {}), value, "$", found)
    return found


def _check(schema: dict[str, Any], defs: dict[str, Any], value: Any, where: str,
           found: list[str]) -> None:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        schema = defs.get(ref.rsplit("/", 1)[-1], {})
    for union in ("anyOf", "oneOf"):
        options = schema.get(union)
        if options:
            if not any(not _fails(option, defs, value) for option in options):
                found.append(f"{where}: {value!r:.60} fits none of the allowed forms")
            return
    if "const" in schema and value != schema["const"]:
        found.append(f"{where}: must be {schema['const']!r}, got {value!r:.60}")
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(item) for item in schema["enum"])
        found.append(f"{where}: must be one of {allowed}, got {value!r:.60}")
        return
    kind = schema.get("type")
    if kind is not None and not _is(kind, value):
        found.append(f"{where}: expected {_name(kind)}, got {type(value).__name__}")
        return
    if isinstance(value, dict):
        _check_object(schema, defs, value, where, found)
    elif isinstance(value, list):
        _check_array(schema, defs, value, where, found)
    elif isinstance(value, str):
        _check_string(schema, value, where, found)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(schema, value, where, found)


def _fails(schema: dict[str, Any], defs: dict[str, Any], value: Any) -> bool:
    found: list[str] = []
    _check(schema, defs, value, "$", found)
    return bool(found)


def _is(kind: str | list[str], value: Any) -> bool:
    kinds = [kind] if isinstance(kind, str) else kind
    for name in kinds:
        if name in ("integer", "number") and isinstance(value, bool):
            continue
        if name == "integer" and isinstance(value, float) and value.is_integer():
            return True
        if isinstance(value, _TYPES.get(name, ())):
            return True
    return False


def _name(kind: str | list[str]) -> str:
    return kind if isinstance(kind, str) else " or ".join(kind)


def _check_object(schema: dict[str, Any], defs: dict[str, Any], value: dict[str, Any],
                  where: str, found: list[str]) -> None:
    properties: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            found.append(f"{where}.{name}: is required")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check(properties[name], defs, item, f"{where}.{name}", found)
        elif extra is False:
            found.append(f"{where}.{name}: is not a field of this type")
        elif isinstance(extra, dict):
            _check(extra, defs, item, f"{where}.{name}", found)


def _check_array(schema: dict[str, Any], defs: dict[str, Any], value: list[Any], where: str,
                 found: list[str]) -> None:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and len(value) < low:
        found.append(f"{where}: needs at least {low} items, got {len(value)}")
    if high is not None and len(value) > high:
        found.append(f"{where}: takes at most {high} items, got {len(value)}")
    prefix = schema.get("prefixItems", [])
    items = schema.get("items")
    for index, item in enumerate(value):
        if index < len(prefix):
            _check(prefix[index], defs, item, f"{where}[{index}]", found)
        elif isinstance(items, dict):
            _check(items, defs, item, f"{where}[{index}]", found)


def _check_string(schema: dict[str, Any], value: str, where: str, found: list[str]) -> None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None and len(value) < low:
        found.append(f"{where}: must be at least {low} characters long")
    if high is not None and len(value) > high:
        found.append(f"{where}: must be at most {high} characters long")
    pattern = schema.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        found.append(f"{where}: must match the pattern {pattern!r}")


def _check_number(schema: dict[str, Any], value: float, where: str, found: list[str]) -> None:
    bounds = (("minimum", lambda b: value >= b, ">="), ("maximum", lambda b: value <= b, "<="),
              ("exclusiveMinimum", lambda b: value > b, ">"),
              ("exclusiveMaximum", lambda b: value < b, "<"))
    for name, holds, sign in bounds:
        bound = schema.get(name)
        if bound is not None and not holds(bound):
            found.append(f"{where}: must be {sign} {bound}, got {value}")
    multiple = schema.get("multipleOf")
    if multiple and (value / multiple) % 1:
        found.append(f"{where}: must be a multiple of {multiple}")
