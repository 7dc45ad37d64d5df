"""Checking plain data against the JSON Schema a gate stores for its `input_type`.

A decision made where the pipeline's types are not loaded (`roost decide`) is checked
against the schema stored with the gate; the run decodes it with the type when it
resumes (`msgspec.json.decode`), so the check refuses what that decoding refuses: an
edit it let through would strand the run. `schema_of` makes the stored schema:
msgspec's, plus `x-roost-*` keywords for what msgspec's decoder checks but its schema
leaves out (a struct's tag field, keys that are not strings, datetimes and times that
have no `format`). Only what `schema_of` emits is understood: `$ref`/`$defs`, `type`,
`enum`, `const`, `anyOf`/`oneOf` (with `discriminator`), object `properties`/`required`/
`additionalProperties`/`propertyNames`, array `items`/`prefixItems`, the numeric,
length and pattern bounds, `format` and base64 `contentEncoding`.
"""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from typing import Annotated, Any

import msgspec
import msgspec.inspect as mi

#: On a struct's object schema: its tag field, which only a union choosing among structs
#: by it requires (a struct decoded on its own takes the tag or leaves it out).
TAG = "x-roost-tag"
#: On a mapping's schema whose keys are not strings: the keys' schema, each key (a JSON
#: string) decoded first as msgspec decodes such keys.
KEYS = "x-roost-keys"

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "null": (type(None),), "number": (int, float), "integer": (int,)}

#: Each string format: the type msgspec decodes such a string as, and what it must be.
_FORMATS: dict[str, tuple[Any, str]] = {
    "date-time": (Annotated[datetime.datetime, msgspec.Meta(tz=True)],
                  "an RFC 3339 date and time with a timezone"),
    "x-roost-date-time": (datetime.datetime, "an RFC 3339 date and time"),
    "x-roost-naive-date-time": (Annotated[datetime.datetime, msgspec.Meta(tz=False)],
                                "an RFC 3339 date and time without a timezone"),
    "date": (datetime.date, "an RFC 3339 date (YYYY-MM-DD)"),
    "time": (Annotated[datetime.time, msgspec.Meta(tz=True)],
             "an RFC 3339 time with a timezone"),
    "partial-time": (Annotated[datetime.time, msgspec.Meta(tz=False)],
                     "an RFC 3339 time without a timezone"),
    "x-roost-time": (datetime.time, "an RFC 3339 time"),
    "duration": (datetime.timedelta, "an ISO 8601 duration"),
    "uuid": (uuid.UUID, "a UUID"),
    "decimal": (decimal.Decimal, "a decimal number"),
}
_BASE64 = (bytes, "base64-encoded bytes")

_DICT_TYPES = tuple(getattr(mi, name) for name in ("DictType", "FrozenDictType")
                    if hasattr(mi, name))


# --- the schema ---------------------------------------------------------------------------


def schema_of(input_type: Any) -> dict[str, Any]:
    """The JSON Schema to store for a gate's `input_type`: msgspec's, with the `x-roost-*`
    keywords and formats that let `problems` refuse what decoding it as the type refuses."""
    schema = msgspec.json.schema(input_type)
    _annotate(mi.type_info(input_type), schema, schema.get("$defs", {}), set())
    return schema


def _annotate(t: mi.Type, schema: dict[str, Any], defs: dict[str, Any], seen: set[str]) -> None:
    """Add to `schema` (msgspec's for type `t`) what its decoder checks and it does not say."""
    while isinstance(t, mi.Metadata):
        t = t.type
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen or name not in defs:
            return
        seen.add(name)
        schema = defs[name]
    if isinstance(t, mi.StructType):
        if t.array_like:
            offset = 0 if t.tag_field is None else 1
            for index, field in enumerate(t.fields):
                _annotate_item(field.type, schema.get("prefixItems"), index + offset, defs, seen)
        else:
            if t.tag_field is not None:
                schema[TAG] = t.tag_field
            for field in t.fields:
                _annotate_key(field.type, schema.get("properties"), field.encode_name, defs, seen)
    elif isinstance(t, mi.NamedTupleType):
        for index, field in enumerate(t.fields):
            _annotate_item(field.type, schema.get("prefixItems"), index, defs, seen)
    elif isinstance(t, mi.TypedDictType | mi.DataclassType):
        for field in t.fields:
            _annotate_key(field.type, schema.get("properties"), field.encode_name, defs, seen)
    elif isinstance(t, mi.CollectionType):
        _annotate_key(t.item_type, schema, "items", defs, seen)
    elif isinstance(t, mi.TupleType):
        for index, item in enumerate(t.item_types):
            _annotate_item(item, schema.get("prefixItems"), index, defs, seen)
    elif isinstance(t, _DICT_TYPES):
        _annotate_key(t.value_type, schema, "additionalProperties", defs, seen)
        keys = _key_schema(t.key_type)
        if keys is not None and "propertyNames" not in schema:
            schema[KEYS] = keys
    elif isinstance(t, mi.UnionType):
        _annotate_union(t, schema, defs, seen)
    elif isinstance(t, mi.DateTimeType | mi.TimeType) and "format" not in schema:
        schema["format"] = _time_format(t)


def _annotate_key(t: mi.Type, parent: Any, key: str, defs: dict[str, Any],
                  seen: set[str]) -> None:
    if isinstance(parent, dict) and isinstance(parent.get(key), dict):
        _annotate(t, parent[key], defs, seen)


def _annotate_item(t: mi.Type, items: Any, index: int, defs: dict[str, Any],
                   seen: set[str]) -> None:
    if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
        _annotate(t, items[index], defs, seen)


def _annotate_union(t: mi.UnionType, schema: dict[str, Any], defs: dict[str, Any],
                    seen: set[str]) -> None:
    """Walk a union's options in the order msgspec writes them: the other types, then the
    structs (several: one `anyOf` with a `discriminator`), then None."""
    structs: dict[Any, mi.Type] = {}
    others: list[mi.Type] = []
    has_none = False
    for option in t.types:
        real = option
        while isinstance(real, mi.Metadata):
            real = real.type
        if isinstance(real, mi.StructType) and not real.array_like:
            structs[real.tag] = option
        elif isinstance(real, mi.NoneType):
            has_none = True
        else:
            others.append(option)
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return
    for index, option in enumerate(others):
        _annotate_item(option, options, index, defs, seen)
    if len(structs) == 1:
        _annotate_item(next(iter(structs.values())), options, len(others), defs, seen)
    elif structs:
        group = schema if not others and not has_none else (
            options[len(others)] if len(others) < len(options) else {})
        for index, option in enumerate(structs.values()):
            _annotate_item(option, group.get("anyOf"), index, defs, seen)


def _time_format(t: mi.DateTimeType | mi.TimeType) -> str:
    """The format of a datetime or time whose schema msgspec writes without one."""
    if isinstance(t, mi.TimeType):
        return "x-roost-time"
    return "x-roost-date-time" if t.tz is None else "x-roost-naive-date-time"


def _key_schema(t: mi.Type) -> dict[str, Any] | None:
    """The schema of a mapping's keys that msgspec's schema leaves out: those that are not
    plain or enumerated strings (None for those, and for unions, decoded as strings)."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.IntType | mi.FloatType):
        schema: dict[str, Any] = {"type": "integer" if isinstance(t, mi.IntType) else "number"}
        for name, bound in (("minimum", t.ge), ("exclusiveMinimum", t.gt), ("maximum", t.le),
                            ("exclusiveMaximum", t.lt), ("multipleOf", t.multiple_of)):
            if bound is not None:
                schema[name] = bound
        return schema
    if isinstance(t, mi.LiteralType | mi.EnumType):
        values = t.values if isinstance(t, mi.LiteralType) else [
            member.value for member in t.cls.__members__.values()]
        return {"enum": sorted(values)} if all(
            isinstance(value, int) for value in values) else None
    if isinstance(t, mi.DateTimeType | mi.TimeType):
        if isinstance(t, mi.DateTimeType) and t.tz is True:
            return {"type": "string", "format": "date-time"}
        if isinstance(t, mi.TimeType) and t.tz is not None:
            return {"type": "string", "format": "time" if t.tz else "partial-time"}
        return {"type": "string", "format": _time_format(t)}
    formats = {mi.DateType: "date", mi.TimeDeltaType: "duration", mi.UUIDType: "uuid",
               mi.DecimalType: "decimal"}
    for kind, name in formats.items():
        if isinstance(t, kind):
            return {"type": "string", "format": name}
    if isinstance(t, mi.BytesType | mi.ByteArrayType | mi.MemoryViewType):
        return {"type": "string", "contentEncoding": "base64"}
    return None


# --- the check ----------------------------------------------------------------------------


def problems(schema: dict[str, Any], value: Any) -> list[str]:
    """What is wrong with `value` (plain JSON data) under `schema`: one line per problem,
    each naming where (`$.to.addr`); empty when it fits."""
    found: list[str] = []
    _check(schema, schema.get("$defs", {}), value, "$", found)
    return found


def _check(schema: dict[str, Any], defs: dict[str, Any], value: Any, where: str,
           found: list[str], *, tag_required: bool = False) -> None:
    schema = _resolve(schema, defs)
    for union in ("anyOf", "oneOf"):
        options = schema.get(union)
        if options:
            _check_union(schema, options, defs, value, where, found)
            return
    if "const" in schema and not _same(value, schema["const"]):
        found.append(f"{where}: must be {schema['const']!r}, got {value!r:.60}")
        return
    if "enum" in schema and not any(_same(value, item) for item in schema["enum"]):
        allowed = ", ".join(repr(item) for item in schema["enum"])
        found.append(f"{where}: must be one of {allowed}, got {value!r:.60}")
        return
    kind = schema.get("type")
    if kind is not None and not _is(kind, value) and not _decimal_number(schema, value):
        hint = " (write a whole number without a decimal point)" if "integer" in kind \
            and isinstance(value, float) and value.is_integer() else ""
        found.append(f"{where}: expected {_name(kind)}, got {_shown(value)}{hint}")
        return
    if isinstance(value, dict):
        _check_object(schema, defs, value, where, found, tag_required)
    elif isinstance(value, list):
        _check_array(schema, defs, value, where, found)
    elif isinstance(value, str):
        _check_string(schema, value, where, found)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(schema, value, where, found)


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return defs.get(ref.rsplit("/", 1)[-1], {})
    return schema


def _fails(schema: dict[str, Any], defs: dict[str, Any], value: Any) -> bool:
    found: list[str] = []
    _check(schema, defs, value, "$", found)
    return bool(found)


def _check_union(schema: dict[str, Any], options: list[dict[str, Any]], defs: dict[str, Any],
                 value: Any, where: str, found: list[str]) -> None:
    """A union as msgspec decodes it: structs chosen by their tag, other forms by the JSON
    kind of the value, so a value of one form's kind is reported as that form reports it."""
    discriminator = schema.get("discriminator")
    if isinstance(discriminator, dict):
        _check_tagged(discriminator.get("propertyName", "type"), options, defs, value, where,
                      found)
        return
    if any(not _fails(option, defs, value) for option in options):
        return
    of_kind = [option for option in options if _kind_fits(option, defs, value)]
    if len(of_kind) == 1:
        _check(of_kind[0], defs, value, where, found)
        return
    forms = " or ".join(_describe(option, defs) for option in options)
    found.append(f"{where}: expected {forms}, got {_shown(value)}")


def _check_tagged(field: str, options: list[dict[str, Any]], defs: dict[str, Any], value: Any,
                  where: str, found: list[str]) -> None:
    """A union of structs told apart by their tag `field`, which the value must hold."""
    tags = {}
    for option in options:
        tag = _resolve(option, defs).get("properties", {}).get(field, {}).get("enum", [None])[0]
        tags[msgspec.json.encode(tag)] = (tag, option)
    allowed = ", ".join(repr(tag) for tag, _ in tags.values())
    if not isinstance(value, dict):
        found.append(f"{where}: expected object, got {_json_name(value)}")
    elif field not in value:
        found.append(f"{where}.{field}: is required, naming the form: one of {allowed}")
    elif (chosen := tags.get(msgspec.json.encode(value[field]))) is None \
            or not _same(value[field], chosen[0]):
        found.append(f"{where}.{field}: must be one of {allowed}, got {value[field]!r:.60}")
    else:
        _check(chosen[1], defs, value, where, found, tag_required=True)


def _kind_fits(schema: dict[str, Any], defs: dict[str, Any], value: Any) -> bool:
    """Whether `value` is of the JSON kind `schema` takes (whatever its bounds)."""
    schema = _resolve(schema, defs)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return any(_kind_fits(option, defs, value) for option in options)
    if "const" in schema:
        return _same_kind(value, schema["const"])
    if "enum" in schema:
        return any(_same_kind(value, item) for item in schema["enum"])
    kind = schema.get("type")
    return kind is None or _is(kind, value) or _decimal_number(schema, value)


def _describe(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    schema = _resolve(schema, defs)
    if isinstance(ref, str):
        return str(schema.get("title") or ref.rsplit("/", 1)[-1])
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(_describe(option, defs) for option in options)
    if "enum" in schema:
        return "one of " + ", ".join(repr(item) for item in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    return _name(schema.get("type", "any value"))


def _same(value: Any, item: Any) -> bool:
    """Equal as JSON values: 1 is not 1.0, nor true."""
    return _same_kind(value, item) and value == item


def _same_kind(value: Any, item: Any) -> bool:
    return type(value) is type(item)


def _is(kind: str | list[str], value: Any) -> bool:
    kinds = [kind] if isinstance(kind, str) else kind
    for name in kinds:
        if name in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, _TYPES.get(name, ())):
            return True
    return False


def _decimal_number(schema: dict[str, Any], value: Any) -> bool:
    """A number where a decimal's string is expected: msgspec decodes a Decimal from both."""
    return (schema.get("format") == "decimal" and isinstance(value, int | float)
            and not isinstance(value, bool))


def _name(kind: str | list[str]) -> str:
    return kind if isinstance(kind, str) else " or ".join(kind)


def _json_name(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if type(value) in _TYPES[name] or (name == "number" and isinstance(value, float)):
            return name
    return type(value).__name__


def _shown(value: Any) -> str:
    """A value's JSON kind, and a scalar's value."""
    if isinstance(value, dict | list):
        return _json_name(value)
    return f"{_json_name(value)} {value!r:.60}"


def _check_object(schema: dict[str, Any], defs: dict[str, Any], value: dict[str, Any],
                  where: str, found: list[str], tag_required: bool) -> None:
    properties: dict[str, Any] = schema.get("properties", {})
    optional_tag = None if tag_required else schema.get(TAG)
    for name in schema.get("required", []):
        if name not in value and name != optional_tag:
            found.append(f"{where}.{name}: is required")
    low, high = schema.get("minProperties"), schema.get("maxProperties")
    if low is not None and len(value) < low:
        found.append(f"{where}: needs at least {low} entries, got {len(value)}")
    if high is not None and len(value) > high:
        found.append(f"{where}: takes at most {high} entries, got {len(value)}")
    names, keys = schema.get("propertyNames"), schema.get(KEYS)
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check(properties[name], defs, item, f"{where}.{name}", found)
            continue
        if isinstance(names, dict):
            _check(names, defs, name, f"{where} key {name!r:.60}", found)
        if isinstance(keys, dict):
            _check_key(keys, defs, name, f"{where} key {name!r:.60}", found)
        if extra is False:
            found.append(f"{where}.{name}: is not a field of this type")
        elif isinstance(extra, dict):
            _check(extra, defs, item, f"{where}.{name}", found)


def _check_key(schema: dict[str, Any], defs: dict[str, Any], key: str, where: str,
               found: list[str]) -> None:
    """A mapping's key (a JSON string) decoded as msgspec decodes keys of `schema`'s kind:
    integers and numbers from their digits, anything else as the string it is."""
    resolved = _resolve(schema, defs)
    kind = resolved.get("type")
    if kind is None and resolved.get("enum"):
        kind = "integer" if all(isinstance(item, int) for item in resolved["enum"]) else None
    if kind in ("integer", "number"):
        as_type = int if kind == "integer" else float
        try:
            decoded: Any = msgspec.json.decode(msgspec.json.encode({key: None}),
                                               type=dict[as_type, None])  # type: ignore[valid-type]
        except msgspec.ValidationError:
            found.append(f"{where}: must be {'an integer' if as_type is int else 'a number'}")
            return
        [key] = decoded
    _check(schema, defs, key, where, found)


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
    _check_format(schema, value, where, found)


def _check_format(schema: dict[str, Any], value: str | float, where: str,
                  found: list[str]) -> None:
    """A string of a format (or a decimal's number) decoded by msgspec as its type."""
    decodes_as = _BASE64 if schema.get("contentEncoding") == "base64" else _FORMATS.get(
        schema.get("format", ""))
    if decodes_as is None:
        return
    kind, what = decodes_as
    try:
        msgspec.json.decode(msgspec.json.encode(value), type=kind)
    except msgspec.ValidationError:
        found.append(f"{where}: must be {what}, got {value!r:.60}")


def _check_number(schema: dict[str, Any], value: float, where: str, found: list[str]) -> None:
    bounds = (("minimum", lambda b: value >= b, ">="), ("maximum", lambda b: value <= b, "<="),
              ("exclusiveMinimum", lambda b: value > b, ">"),
              ("exclusiveMaximum", lambda b: value < b, "<"))
    for name, holds, sign in bounds:
        bound = schema.get(name)
        if bound is not None and not holds(bound):
            found.append(f"{where}: must be {sign} {bound}, got {value}")
    multiple = schema.get("multipleOf")
    if multiple and (value % multiple if isinstance(value, int) and isinstance(multiple, int)
                     else (value / multiple) % 1):
        found.append(f"{where}: must be a multiple of {multiple}")
    _check_format(schema, value, where, found)
