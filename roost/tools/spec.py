"""Tool declarations: the `@tool` decorator, `ToolSpec` and its argument binding, the registry.

    @tool(idempotent=False, breaker=Breaker(failures=5), retry=Retry(attempts=3), timeout=10.0)
    async def send_email(to: str, body: str) -> str: ...

    registry = ToolRegistry()
    registry.register(send_email)
    spec = registry.get("send_email")
    args = spec.bind({"to": "ada@example.org", "body": "hi"})   # checked and converted

The decorator leaves the function as it was and records its spec on it. All
durations are seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any, Final, TypeVar, overload

import msgspec
import msgspec.inspect

from roost._validate import is_count, is_number
from roost.errors import ConfigurationError, ToolArgumentsInvalid, UnknownTool
from roost.tools.breaker import Breaker
from roost.tools.bulkhead import DEFAULT_MAX_WAITING
from roost.tools.retry import Retry

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_VERIFY_TIMEOUT",
    "Done",
    "NotDone",
    "ToolRegistry",
    "ToolSpec",
    "Verified",
    "result_decoder",
    "spec_of",
    "tool",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: The longest tool name, in bytes of UTF-8: with a key (at most 255 bytes) it must fit in
#: one LMDB key of the ledger (511 bytes).
MAX_NAME_BYTES: Final = 200
#: Keywords `Tools.call` takes for itself, so no tool parameter can have these names.
CALL_OPTIONS: Final = frozenset({"key", "timeout"})
SPEC_ATTRIBUTE: Final = "__roost_tool__"
"""Attribute under which `@tool` (and tool objects such as HttpTool) keep their spec."""

_SINGLE_ATTEMPT: Final = Retry(attempts=1)

DEFAULT_TIMEOUT: Final = 60.0
"""Time limit of one attempt of a tool that sets neither `timeout` nor `retry.attempt_timeout`."""

DEFAULT_VERIFY_TIMEOUT: Final = 30.0
"""Time limit of one run of a tool's verify hook, unless it sets `verify_timeout`."""


class Done(msgspec.Struct, frozen=True):
    """A verify hook's answer: the call already took effect, and `result` is its result."""

    result: Any = None


class NotDone(msgspec.Struct, frozen=True):
    """A verify hook's answer: the call did not take effect, so it is safe to run it."""


Verified = Done | NotDone
"""What a verify hook returns: `Done(result)` or `NotDone()`."""

Verify = Callable[[str, Mapping[str, Any]], Awaitable[Verified]]
"""`await verify(key, args)`: checks, reading only, whether the call keyed `key` happened."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ToolSpec:
    """A tool and how it is called: one per registered tool, frozen.

    Attributes:
        name: Unique name callers use.
        fn: The async function to call with the tool's keyword arguments.
        idempotent: Running the call twice has the effect of running it once,
            so the proxy may repeat a call whose outcome it lost.
        read_only: The tool has no side effects: its calls skip the idempotency
            ledger (and so never need `verify`).
        breaker: Circuit breaker settings; None for no breaker.
        retry: Retry policy; None for a single attempt.
        timeout: Time limit of one attempt. None for the default: 60 s
            (`DEFAULT_TIMEOUT`), or `retry.attempt_timeout` when that is set; set
            either this or `retry.attempt_timeout`, not both. An attempt past it
            is cancelled; its outcome is unknown, so a tool that is not
            idempotent is not retried unless `verify` finds it not done. An attempt
            that ignores its cancellation for a second more is abandoned: its call
            ends as timed out and its task is left running. Only a
            read-only tool with no breaker, bulkhead or retry and no timeout of
            its own runs without a limit: it runs in its caller's task as a
            plain await, holds nothing shared, and its caller can cancel it.
        concurrency: Calls allowed to run at once (bulkhead); None for no limit.
        max_waiting: Callers allowed to wait for a slot when `concurrency` is set
            (default 100; past it, callers get ToolBusy at once).
        fallback: Async callable taking the same keyword arguments, awaited
            instead of the tool while its breaker is open.
        verify: Async read-before-write check `verify(key, args)` that settles a
            call whose outcome is unknown (found in flight after a crash, or an
            attempt that timed out or lost its connection after sending):
            `Done(result)` or `NotDone()`. If it raises, runs past
            `verify_timeout` or returns anything else, the call ends in
            ToolOutcomeUnknown.
        verify_timeout: Time limit of one run of `verify` (default 30 s).
        key_param: Name of a keyword parameter of `fn` through which the proxy
            passes the idempotency key (e.g. to send it to a remote API);
            callers do not pass it.
        gate: A `roost.Gate` for an irreversible tool: every pipeline step of the
            tool (`Step(tool=...)`) waits for a person first. A step's own gate that
            opens stands in for it (one approval passes both); when the step's gate
            does not open (its `when` is false), this one applies. Any other call
            through `Tools.call`, which no gate guards, is refused with ToolGated;
            calling the decorated function itself runs it unguarded (it is a plain
            function).
        signature: Derived: the signature callers' arguments must fit (without
            `key_param`). Arguments are also checked against its annotations
            (see `bind`).
        retry_policy: Derived: the policy calls run under, `retry` (or a single
            attempt) with the attempt limit described under `timeout`.
        longest_run: Derived: the longest a call runs under the tool's own limits:
            the policy's deadline, else every attempt to its limit and every
            backoff at its longest (and with `verify`, a run of it before the
            first attempt, for a key found in flight, and after each). None for a
            read-only tool that runs without a limit.
    """

    name: str
    fn: Callable[..., Awaitable[Any]]
    idempotent: bool = False
    read_only: bool = False
    breaker: Breaker | None = None
    retry: Retry | None = None
    timeout: float | None = None
    concurrency: int | None = None
    max_waiting: int = DEFAULT_MAX_WAITING
    fallback: Callable[..., Awaitable[Any]] | None = None
    verify: Verify | None = None
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    key_param: str | None = None
    gate: Any = None  # a roost.Gate (pipelines sit above tools: not imported here)
    signature: inspect.Signature = dataclasses.field(init=False, repr=False, compare=False)
    retry_policy: Retry = dataclasses.field(init=False, repr=False, compare=False)
    longest_run: float | None = dataclasses.field(init=False, repr=False, compare=False)
    _plain: tuple[frozenset[str], frozenset[str], dict[str, Any]] | None = dataclasses.field(
        init=False, repr=False, compare=False)
    _types: dict[str, Any] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = self.name
        # NUL separates the tool from the key in a ledger key: a name holding one would
        # let tool "t", key "a\0b" and tool "t\0a", key "b" share an entry.
        if (not isinstance(name, str) or not name or name.strip() != name or " " in name
                or "\x00" in name or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES):
            raise ConfigurationError(
                f"tool name={name!r:.80} is invalid; use a non-empty string without spaces or "
                f"NUL characters, of at most {MAX_NAME_BYTES} bytes of UTF-8 (the ledger keys "
                "calls by it)"
            )
        _check_async_callable(name, "fn", self.fn)
        for flag in ("idempotent", "read_only"):
            if not isinstance(getattr(self, flag), bool):
                raise _invalid(name, flag, getattr(self, flag), "use True or False")
        if self.breaker is not None and not isinstance(self.breaker, Breaker):
            raise _invalid(name, "breaker", self.breaker, "use roost.Breaker(...) or None")
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise _invalid(name, "retry", self.retry, "use roost.Retry(...) or None")
        if self.gate is not None:
            if not callable(getattr(self.gate, "check", None)):
                raise _invalid(name, "gate", self.gate, "use roost.Gate(...) or None")
            self.gate.check(f"tool {name!r}")  # its options, as a pipeline step's gate's
        if self.timeout is not None and not (is_number(self.timeout) and self.timeout > 0):
            raise _invalid(name, "timeout", self.timeout, "use a positive number of seconds")
        if self.timeout is not None and self.retry is not None and (
            self.retry.attempt_timeout is not None
        ):
            raise _invalid(
                name, "timeout", self.timeout,
                f"retry.attempt_timeout={self.retry.attempt_timeout!r} also limits each "
                "attempt; set only one of them",
            )
        if self.concurrency is not None and not is_count(self.concurrency, 1):
            raise _invalid(name, "concurrency", self.concurrency, "use a whole number >= 1")
        if not is_count(self.max_waiting, 0):
            raise _invalid(name, "max_waiting", self.max_waiting, "use a whole number >= 0")
        if self.concurrency is None and self.max_waiting != DEFAULT_MAX_WAITING:
            raise _invalid(name, "max_waiting", self.max_waiting,
                           "it bounds the callers waiting for a concurrency slot, and the "
                           "tool has no concurrency= limit; set concurrency= too")
        if self.fallback is not None:
            _check_async_callable(name, "fallback", self.fallback)
        if self.verify is not None:
            _check_async_callable(name, "verify", self.verify)
            if self.read_only:
                raise _invalid(
                    name, "verify", self.verify,
                    "read-only tools skip the ledger, so verify would never run; drop one",
                )
        if not (is_number(self.verify_timeout) and self.verify_timeout > 0):
            raise _invalid(name, "verify_timeout", self.verify_timeout,
                           "use a positive number of seconds")
        object.__setattr__(self, "signature", _tool_signature(name, self.fn, self.key_param))
        object.__setattr__(self, "_plain", _plain_parameters(self.signature))
        object.__setattr__(self, "_types", _argument_types(self.fn, self.signature))
        policy = self.retry or _SINGLE_ATTEMPT
        if self.timeout is not None:
            policy = msgspec.structs.replace(policy, attempt_timeout=self.timeout)
        elif policy.attempt_timeout is None and not (
            self.read_only and self.retry is None and self.breaker is None
            and self.concurrency is None
        ):
            policy = msgspec.structs.replace(policy, attempt_timeout=DEFAULT_TIMEOUT)
        object.__setattr__(self, "retry_policy", policy)
        object.__setattr__(self, "longest_run", _longest_run(policy, self.verify,
                                                             self.verify_timeout))

    def bind(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Check `arguments` against the tool's signature and its annotations; fill in defaults.

        Each argument given is converted to its parameter's annotated type the
        way `msgspec.convert` does (strictly: a dict becomes the annotated
        Struct, an int a float, but "5" never an int), so that a call is checked
        before any key is claimed and equal calls fingerprint alike. Defaults are
        taken as they are. Parameters without an annotation, annotated `Any`,
        or with a type msgspec cannot check (or an annotation that does not
        resolve) take any value.

        Returns:
            The complete keyword arguments to call `fn` with (extra keywords of a
            `**kwargs` parameter flattened), the form to fingerprint.

        Raises:
            ToolArgumentsInvalid: A required argument is missing, an unknown one
                was given, one does not fit its annotation (naming it, the
                expected and the given type), or the idempotency key was passed
                as an argument.
        """
        plain = self._plain
        types = self._types
        if plain is not None:  # the fast path: only named parameters, all arguments fit
            names, required, defaults = plain
            given = arguments.keys()
            if given <= names and required <= given:
                checked = {**defaults, **arguments}
                for name in given:
                    expected = types.get(name)
                    value = checked[name]
                    # A value of exactly the annotated class is as convert would leave it.
                    if expected is not None and type(value) is not expected:
                        try:
                            checked[name] = msgspec.convert(value, expected)
                        except msgspec.ValidationError as error:
                            raise self._mismatch(name, value, expected, error) from None
                return checked
        if self.key_param is not None and self.key_param in arguments:
            raise ToolArgumentsInvalid(
                self.name,
                f"{self.key_param!r} carries the idempotency key and is filled in by the "
                "tool proxy; pass the key to the call instead",
            )
        try:
            bound = self.signature.bind(**arguments)
        except TypeError as error:
            problem = _misfit(self.signature, arguments) or str(error)
            raise ToolArgumentsInvalid(
                self.name, f"{problem}; expected {self.name}{_without_annotations(self.signature)}"
            ) from None
        parameters = self.signature.parameters
        for name, value in list(bound.arguments.items()):  # those given: defaults come next
            expected = types.get(name)
            if expected is None:
                continue
            if parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {
                    extra: self._convert(extra, item, expected) for extra, item in value.items()}
            else:
                bound.arguments[name] = self._convert(name, value, expected)
        bound.apply_defaults()
        flat: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                flat.update(value)
            else:
                flat[name] = value
        return flat

    def _convert(self, name: str, value: Any, expected: Any) -> Any:
        """`value` as the type `expected` (as `msgspec.convert` makes it), for argument `name`."""
        if type(value) is expected:
            return value
        try:
            return msgspec.convert(value, expected)
        except msgspec.ValidationError as error:
            raise self._mismatch(name, value, expected, error) from None

    def _mismatch(self, name: str, value: Any, expected: Any,
                  error: msgspec.ValidationError) -> ToolArgumentsInvalid:
        shown = type_name(expected)
        detail = str(error).replace("`$", f"`{name}")
        return ToolArgumentsInvalid(
            self.name,
            f"argument {name!r} must be {shown}, got {type(value).__name__} {value!r:.60} "
            f"({detail}); pass a value of that type",
            argument=name, expected=shown, given=type(value).__name__,
        )

    def invoke(self, arguments: Mapping[str, Any], *, key: str | None) -> Awaitable[Any]:
        """Start a call of `fn` with bound `arguments`, passing `key` through `key_param`."""
        if self.key_param is None:
            return self.fn(**arguments)
        return self.fn(**arguments, **{self.key_param: key})


#: The gated tool a pipeline step may call now, its gate having been passed (set by the
#: run actor around the call; a direct call of a gated tool sees another value).
gate_passed: ContextVar[str | None] = ContextVar("roost_gate_passed", default=None)

_OPTIONS: Final = frozenset(
    field.name for field in dataclasses.fields(ToolSpec) if field.init
) - {"name", "fn"}


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    idempotent: bool = False,
    read_only: bool = False,
    breaker: Breaker | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    concurrency: int | None = None,
    max_waiting: int = DEFAULT_MAX_WAITING,
    fallback: Callable[..., Awaitable[Any]] | None = None,
    verify: Verify | None = None,
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT,
    key_param: str | None = None,
    gate: Any = None,
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None, /, *, name: str | None = None, **options: Any
) -> F | Callable[[F], F]:
    """Declare an async function as a tool, bare (`@tool`) or with options (`@tool(...)`).

    The options are `ToolSpec`'s; `name` defaults to the function's name. The
    function is returned unchanged, with its spec recorded on it for
    `ToolRegistry.register`.

    Raises:
        ConfigurationError: An option is invalid, or the function is not async.
    """
    if fn is not None and not callable(fn):
        raise ConfigurationError(
            f"@tool got {fn!r} instead of a function; pass options by keyword, "
            f"e.g. @tool(name={fn!r})"
        )

    unknown = options.keys() - _OPTIONS
    if unknown:
        raise ConfigurationError(
            f"@tool got unknown option(s) {', '.join(sorted(unknown))}; the options are "
            f"name, {', '.join(sorted(_OPTIONS))}"
        )

    def decorate(function: F) -> F:
        spec_name = name if name is not None else getattr(function, "__name__", "")
        spec = ToolSpec(name=spec_name, fn=function, **options)
        setattr(function, SPEC_ATTRIBUTE, spec)
        return function

    return decorate if fn is None else decorate(fn)


def spec_of(obj: object) -> ToolSpec:
    """The spec of a `ToolSpec`, a `@tool` function, a tool object, or a plain async function.

    Raises:
        ConfigurationError: `obj` is none of these.
    """
    if isinstance(obj, ToolSpec):
        return obj
    spec = getattr(obj, SPEC_ATTRIBUTE, None)
    if isinstance(spec, ToolSpec):
        return spec
    if callable(obj):
        return ToolSpec(name=getattr(obj, "__name__", ""), fn=obj)
    raise ConfigurationError(
        f"cannot register {obj!r} as a tool; pass an async function, a @tool function, "
        "a ToolSpec or a tool object such as HttpTool"
    )


class ResultMisfit(ValueError):
    """A tool's result cannot be recorded (`ToolRegistry.recorded`): it does not encode
    (`annotation` None), or does not fit the tool's return annotation; `cause` says how."""

    def __init__(self, cause: Exception, annotation: Any = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.annotation = annotation


_RESULT_ENCODER = msgspec.msgpack.Encoder()


class ToolRegistry:
    """The tools a system can call, by name.

    Args:
        tools: Tools to register at once (anything `register` takes).
    """

    def __init__(self, tools: Iterable[object] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        self._results: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        for item in tools:
            self.register(item)

    def register(self, tool: object) -> ToolSpec:
        """Add a tool: a `@tool` function, a plain async function, a ToolSpec or a tool object.

        A side-effecting tool's return annotation is resolved here, once the module
        that declares it is fully loaded, into the decoder of its recorded results.

        Returns:
            The registered spec.

        Raises:
            ConfigurationError: Another tool has the same name, `tool` is not a tool,
                or a side-effecting tool's return annotation does not resolve or is a
                type msgspec cannot decode (see `result_decoder`).
        """
        spec = spec_of(tool)
        if spec.name in self._specs:
            raise ConfigurationError(
                f"tool {spec.name!r} is already registered; give one of them another name "
                "with @tool(name=...)"
            )
        if not spec.read_only:
            self._results[spec.name] = result_decoder(spec)
        self._specs[spec.name] = spec
        return spec

    def results(self, name: str) -> msgspec.msgpack.Decoder[Any]:
        """The decoder of side-effecting tool `name`'s recorded results (see `result_decoder`).

        Raises:
            UnknownTool: No side-effecting tool has that name.
        """
        try:
            return self._results[name]
        except KeyError:
            raise UnknownTool(name, list(self._results)) from None

    def recorded(self, name: str, result: Any) -> tuple[bytes, Any]:
        """`result` of side-effecting tool `name` as the ledger keeps it (msgpack) and as
        every call with its key gets it back (decoded as the tool's return annotation).

        Raises:
            UnknownTool: No side-effecting tool has that name.
            ResultMisfit: It does not encode, or does not fit the return annotation.
        """
        decoder = self.results(name)
        try:
            encoded = _RESULT_ENCODER.encode(result)
        except (TypeError, OverflowError, msgspec.EncodeError) as error:
            raise ResultMisfit(error) from error
        try:
            return encoded, decoder.decode(encoded)
        except msgspec.DecodeError as error:
            raise ResultMisfit(error, decoder.type) from error

    def get(self, name: str) -> ToolSpec:
        """The spec of tool `name`.

        Raises:
            UnknownTool: No tool has that name; the error lists the known ones.
        """
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownTool(name, list(self._specs)) from None

    def names(self) -> list[str]:
        """Names of the registered tools, sorted."""
        return sorted(self._specs)


def _longest_run(policy: Retry, verify: Verify | None, verify_timeout: float) -> float | None:
    """See `ToolSpec.longest_run`."""
    if policy.deadline is not None:
        return policy.deadline
    if policy.attempt_timeout is None:
        return None
    verifies = 0 if verify is None else policy.attempts + 1
    return (policy.attempts * policy.attempt_timeout + verifies * verify_timeout
            + policy.longest_backoff())


def _plain_parameters(
    signature: inspect.Signature,
) -> tuple[frozenset[str], frozenset[str], dict[str, Any]] | None:
    """Names, required names and defaults, when every parameter can be passed by keyword.

    Such signatures bind with a set check and a dict merge instead of `Signature.bind`;
    anything else (`*args`, `**kwargs`, positional-only) takes the general path.
    """
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = signature.parameters.values()
    if any(p.kind not in kinds for p in parameters):
        return None
    names = frozenset(p.name for p in parameters)
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
    return names, names - defaults.keys(), defaults


def _argument_types(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """The type each parameter's arguments are checked and converted against, by name.

    Left out (so taking any value): parameters without an annotation or annotated
    `Any`/`object`, annotations that do not resolve (e.g. a name defined inside a
    function under `from __future__ import annotations`), and types msgspec cannot
    check (e.g. a union of two classes). For `**kwargs` the type is each value's.
    """
    namespace = _namespace(fn)
    types: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            holder = _Annotations({parameter.name: annotation})
            try:
                annotation = typing.get_type_hints(holder, globalns=namespace)[parameter.name]
            except Exception:
                continue
        if annotation in (inspect.Parameter.empty, Any, object):
            continue
        try:
            msgspec.convert(None, annotation)
        except msgspec.ValidationError:
            pass  # a type msgspec checks, which None does not fit
        except Exception:
            continue  # a type msgspec cannot check
        types[parameter.name] = annotation
    return types


class _Annotations:
    """Something `typing.get_type_hints` resolves string annotations of, one at a time."""

    def __init__(self, annotations: dict[str, str]) -> None:
        self.__annotations__ = annotations


def _namespace(fn: Callable[..., Any]) -> dict[str, Any]:
    """The globals string annotations of `fn`'s parameters are to be resolved in."""
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    target = inspect.unwrap(getattr(target, "__func__", target))
    if not inspect.isfunction(target) and callable(target):  # an object: its __call__
        target = type(target).__call__
    return getattr(target, "__globals__", {})


def result_decoder(spec: ToolSpec) -> msgspec.msgpack.Decoder[Any]:
    """The decoder of a side-effecting tool's recorded results, as its return annotation says.

    Each result is checked with it before it is recorded, and the caller gets the
    decoded form, so the first call and every replay return the same value. No
    annotation, `Any` or `object` decode MessagePack's plain values (a tuple comes
    back as a list).

    Raises:
        ConfigurationError: The annotation does not resolve, or is a type msgspec
            cannot decode (e.g. `str | bytes`, or a class that is neither a Struct,
            a dataclass nor a builtin), naming the tool and the annotation.
    """
    annotation = spec.signature.return_annotation
    if isinstance(annotation, str):
        holder = _Annotations({"return": annotation})
        try:
            annotation = typing.get_type_hints(holder, globalns=_namespace(spec.fn))["return"]
        except Exception as error:
            raise ConfigurationError(
                f"tool {spec.name!r}: its return annotation {annotation!r} does not resolve "
                f"({type(error).__name__}: {error}); the recorded results of a side-effecting "
                "tool are decoded as it, so define the type at module level, or annotate "
                "the tool -> Any"
            ) from None
    if annotation in (inspect.Signature.empty, Any, object):
        annotation = Any
    try:
        decoder = msgspec.msgpack.Decoder(annotation)
        custom = _custom_types(msgspec.inspect.type_info(annotation))
    except TypeError as error:
        raise _undecodable(spec.name, annotation, str(error)) from None
    if custom:
        raise _undecodable(spec.name, annotation,
                           f"{', '.join(sorted(type_name(t) for t in custom))} needs a "
                           "dec_hook, which the ledger does not have")
    return decoder


def _undecodable(tool: str, annotation: Any, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"tool {tool!r}: its return annotation {type_name(annotation)} cannot be decoded "
        f"({why}); the results of a side-effecting tool are recorded and replayed as it, so "
        "annotate a type msgspec decodes (str, int, float, bool, None, bytes, list, tuple, "
        "dict, a msgspec Struct, a dataclass, or a union of those with one str-like member), "
        "or Any"
    )


def _custom_types(info: msgspec.inspect.Type) -> set[type]:
    """The classes in a type that msgspec decodes only through a `dec_hook`."""
    found: set[type] = set()
    seen: set[int] = set()
    pending: list[Any] = [info]
    while pending:  # a recursive Struct makes the type info a graph, not a tree
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType):
            found.add(node.cls)
            continue
        for field in node.__struct_fields__:
            value = getattr(node, field)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, msgspec.inspect.Type | msgspec.inspect.Field):
                    pending.append(item)
    return found


def type_name(annotation: Any) -> str:
    """How an error shows a type: `int`, `list[str]`, `Address | None` (no module paths)."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return re.sub(r"(?:\w+\.)+(?=\w)", "", repr(annotation))


def _tool_signature(name: str, fn: Callable[..., Any], key_param: str | None) -> inspect.Signature:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(
            f"tool {name!r}: cannot read the signature of {fn!r} ({error}); wrap it in an "
            "async def with keyword parameters"
        ) from None
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            shown = parameter.replace(annotation=inspect.Parameter.empty)
            raise ConfigurationError(
                f"tool {name!r}: parameter {shown} cannot be passed by keyword; tools are "
                "called with keyword arguments only, so make it a normal or keyword-only one"
            )
        if parameter.name == key_param:
            continue
        if parameter.name in CALL_OPTIONS and parameter.kind is not inspect.Parameter.VAR_KEYWORD:
            receive = (" (or declare key_param='key' to receive the idempotency key through it)"
                       if parameter.name == "key" else "")
            raise ConfigurationError(
                f"tool {name!r}: parameter {parameter.name!r} can never be passed, since "
                "Tools.call takes key= (the idempotency key) and timeout= (how long to wait) "
                f"for itself; rename it{receive}"
            )
        parameters.append(parameter)
    if key_param is not None and key_param not in signature.parameters:
        raise _invalid(
            name, "key_param", key_param, f"{fn!r} has no parameter of that name to receive the key"
        )
    return signature.replace(parameters=parameters)


def _misfit(signature: inspect.Signature, arguments: Mapping[str, Any]) -> str:
    """Every required parameter missing from `arguments` and every name it has that no
    parameter takes ("" if neither), where `Signature.bind` names only the first problem."""
    parameters = signature.parameters.values()
    var_keyword = inspect.Parameter.VAR_KEYWORD
    missing = [p.name for p in parameters
               if p.kind is not var_keyword and p.default is p.empty and p.name not in arguments]
    takes_any = any(p.kind is var_keyword for p in parameters)
    unexpected = [] if takes_any else [
        name for name in arguments if name not in signature.parameters]
    problems = []
    if missing:
        problems.append(_listed("missing a required argument", "missing required arguments",
                                missing, ": "))
    if unexpected:
        problems.append(_listed("got an unexpected keyword argument",
                                "got unexpected keyword arguments", unexpected, " "))
    return "; ".join(problems)


def _listed(one: str, many: str, names: list[str], separator: str) -> str:
    quoted = ", ".join(repr(name) for name in names)
    return f"{one if len(names) == 1 else many}{separator}{quoted}"


def _without_annotations(signature: inspect.Signature) -> inspect.Signature:
    # Annotations may be unevaluated strings (`from __future__ import annotations`),
    # which read badly in an error message.
    empty = inspect.Parameter.empty
    return signature.replace(
        parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
        return_annotation=empty,
    )


def _check_async_callable(tool: str, field: str, fn: object) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise _invalid(
            tool, field, fn, "use an async function (async def); wrap blocking code with "
            "anyio.to_thread.run_sync"
        )


def _invalid(tool: str, field: str, value: object, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"tool {tool!r}: {field}={value!r} is invalid; {allowed}")
