"""Whether two `Pipeline` objects define the same pipeline.

A service that builds its pipeline in a function (once per request, say) registers a new
object each time. Those objects hold new function objects too (a `when=lambda ...`), so
neither `is` nor `==` tells a rebuilt definition from a changed one. Functions count as the
same here when they have the same code, globals, defaults and closure values: the same
source line run twice.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import msgspec

from roost.pipelines.definition import Pipeline


def first_difference(known: Pipeline, other: Pipeline) -> str | None:
    """What differs between `known` and `other` (say "step 'send': timeout"), or None when
    they define the same pipeline."""
    if not _same(known.input_type, other.input_type, set()):
        return "input_type"
    if list(known.steps) != list(other.steps):
        return f"steps {list(known.steps)} against {list(other.steps)}"
    for name, step in known.steps.items():
        for field in step.__struct_fields__:
            if not _same(getattr(step, field), getattr(other.steps[name], field), set()):
                return f"step {name!r}: {field}"
    return None


def _same(a: Any, b: Any, seen: set[tuple[int, int]]) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, msgspec.Struct):
        return all(_same(getattr(a, f), getattr(b, f), seen) for f in a.__struct_fields__)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, seen) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], seen) for k in a)
    if isinstance(a, types.FunctionType):
        # Keyed by the functions themselves, which the pipelines keep alive (the id of a
        # temporary may be reused by the next one).
        pair = (id(a), id(b))
        if pair in seen:  # a closure that refers to itself: compared already, up the stack
            return True
        seen.add(pair)
        return (a.__code__ == b.__code__ and a.__globals__ is b.__globals__
                and _same(a.__defaults__, b.__defaults__, seen)
                and _same(a.__kwdefaults__, b.__kwdefaults__, seen)
                and _same(_cells(a), _cells(b), seen))
    if isinstance(a, types.MethodType):
        return a.__self__ is b.__self__ and _same(a.__func__, b.__func__, seen)
    if isinstance(a, functools.partial):
        return _same((a.func, a.args, a.keywords), (b.func, b.args, b.keywords), seen)
    try:
        return bool(a == b)
    except Exception:  # an object whose == cannot answer is not known to be the same
        return False


def _cells(function: types.FunctionType) -> list[Any]:
    """The values a function's closure holds (an unset cell as a marker of its own)."""
    values = []
    for cell in function.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:
            values.append(_UNSET)
    return values


_UNSET = object()
