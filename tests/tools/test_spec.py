"""Tests of roost/tools/spec.py: @tool, ToolSpec (binding, verify) and the registry."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from roost.errors import (
    ConfigurationError,
    PipelineDefinitionError,
    ToolArgumentsInvalid,
    UnknownTool,
)
from roost.pipelines.gate import Gate
from roost.tools.breaker import Breaker
from roost.tools.http import HttpTool
from roost.tools.retry import Retry
from roost.tools.spec import (
    Done,
    NotDone,
    ToolRegistry,
    ToolSpec,
    Verified,
    result_decoder,
    spec_of,
    tool,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def send_email(to: str, body: str, cc: str | None = None) -> str:
    return f"sent to {to}"


async def already_sent(key: str, args: Mapping[str, Any]) -> Verified:
    return Done("receipt-1") if key == "k1" else NotDone()


# --- the decorator --------------------------------------------------------------------------


def test_bare_tool_records_a_default_spec_and_returns_the_function_unchanged() -> None:
    @tool
    async def search(query: str) -> list[str]:
        return [query]

    spec = spec_of(search)
    assert (spec.name, spec.fn, spec.idempotent, spec.read_only) == (
        "search", search, False, False
    )
    assert (spec.breaker, spec.retry, spec.timeout, spec.concurrency) == (None, None, None, None)


def test_tool_with_options_records_them() -> None:
    breaker = Breaker(failures=5, cooldown=30.0)

    @tool(name="mail", idempotent=True, breaker=breaker, retry=Retry(attempts=3), timeout=10.0,
          concurrency=4, max_waiting=8, verify=already_sent)
    async def send(to: str) -> str:
        return to

    spec = spec_of(send)
    assert spec.name == "mail"
    assert spec.idempotent
    assert spec.breaker is breaker
    assert (spec.concurrency, spec.max_waiting, spec.verify) == (4, 8, already_sent)
    assert spec.retry_policy == Retry(attempts=3, attempt_timeout=10.0)


def test_a_tool_without_retry_runs_one_attempt_within_its_timeout() -> None:
    assert ToolSpec(name="t", fn=send_email, timeout=2.0).retry_policy == Retry(
        attempts=1, attempt_timeout=2.0
    )


@pytest.mark.anyio
async def test_the_decorated_function_still_works_when_called_directly() -> None:
    @tool(read_only=True)
    async def double(x: int) -> int:
        return 2 * x

    assert await double(x=4) == 8


def test_tool_refuses_a_name_passed_positionally() -> None:
    with pytest.raises(ConfigurationError, match=r"@tool got 'mail' .* e.g. @tool\(name='mail'\)"):
        tool("mail")  # type: ignore[call-overload]


def test_tool_refuses_an_unknown_option_and_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) retries; the options are "
                       r"name, breaker, concurrency"):
        tool(retries=3)  # type: ignore[call-overload]


# --- validation -----------------------------------------------------------------------------


def sync_function(x: int) -> int:
    return x


async def positional_only(x: int, /) -> int:
    return x


async def star_args(*values: int) -> int:
    return sum(values)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"fn": sync_function}, r"tool 'sync_function': fn=.* is invalid; use an async function"),
        ({"timeout": 0}, r"tool 'send_email': timeout=0 is invalid; use a positive number"),
        ({"timeout": "10"}, r"timeout='10' is invalid"),
        ({"concurrency": 0}, r"concurrency=0 is invalid; use a whole number >= 1"),
        ({"max_waiting": -1}, r"max_waiting=-1 is invalid"),
        ({"idempotent": "yes"}, r"idempotent='yes' is invalid; use True or False"),
        ({"breaker": {"failures": 3}}, r"breaker=\{'failures': 3\} is invalid; use roost.Breaker"),
        ({"retry": 3}, r"retry=3 is invalid; use roost.Retry"),
        ({"fallback": sync_function}, r"fallback=.* is invalid; use an async function"),
        ({"read_only": True, "verify": already_sent}, r"read-only tools skip the ledger"),
        ({"key_param": "key"}, r"key_param='key' is invalid; .* has no parameter of that name"),
        (
            {"timeout": 5.0, "retry": Retry(attempt_timeout=2.0)},
            r"timeout=5.0 is invalid; retry.attempt_timeout=2.0 also limits each attempt",
        ),
        ({"fn": positional_only}, r"parameter x cannot be passed by keyword"),
        ({"fn": star_args}, r"parameter \*values cannot be passed by keyword"),
    ],
)
def test_bad_options_name_the_tool_the_field_and_the_value(
    options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        fn = options.pop("fn", send_email)
        tool(**options)(fn)


@pytest.mark.parametrize(
    ("gate", "match"),
    [
        (Gate(show="the amount"), r"tool 'send_email': gate show= must be a function"),  # type: ignore[arg-type]
        (Gate(when=True), r"tool 'send_email': gate when= must be a function"),  # type: ignore[arg-type]
        (Gate(reason=3), r"tool 'send_email': gate reason= must be text or a function"),  # type: ignore[arg-type]
        (Gate(assignees=["finance", ""]), r"tool 'send_email': gate assignees= must be non-empty"),
        (Gate(input_type=object()), r"tool 'send_email': gate input_type=.* is not a type"),
    ],
)
def test_a_tools_gate_is_checked_as_a_pipeline_steps_gate_is(gate: Gate, match: str) -> None:
    with pytest.raises(PipelineDefinitionError, match=match):
        tool(gate=gate)(send_email)


@pytest.mark.parametrize("name", ["", " mail", "send mail", 3, "m" * 201])
def test_a_tool_name_must_be_a_word(name: object) -> None:
    with pytest.raises(ConfigurationError, match=r"tool name=.* is invalid"):
        ToolSpec(name=name, fn=send_email)  # type: ignore[arg-type]


def test_a_tool_name_cannot_hold_nul_which_ends_the_name_in_a_ledger_key() -> None:
    # Else tool "t" with key "a\0b" and tool "t\0a" with key "b" would share one entry.
    with pytest.raises(ConfigurationError, match=r"tool name='t\\x00a' is invalid; use a "
                       r"non-empty string without spaces or NUL characters"):
        ToolSpec(name="t\x00a", fn=send_email)


async def keyed(room: int, key: str) -> str:
    return key


async def timed(room: int, *, timeout: float) -> str:
    return str(timeout)


@pytest.mark.parametrize(("fn", "name"), [(keyed, "key"), (timed, "timeout")])
def test_a_parameter_cannot_be_named_like_an_option_tools_call_takes_for_itself(
    fn: Any, name: str,
) -> None:
    with pytest.raises(ConfigurationError, match=rf"tool '{fn.__name__}': parameter '{name}' can "
                       r"never be passed, since Tools.call takes key= .* and timeout= .* for "
                       r"itself; rename it"):
        tool(fn)


def test_a_parameter_named_key_may_receive_the_idempotency_key() -> None:
    spec = ToolSpec(name="keyed", fn=keyed, key_param="key")
    assert list(spec.signature.parameters) == ["room"]


def test_a_partial_of_an_async_function_is_a_valid_tool() -> None:
    spec = ToolSpec(name="mail_ada", fn=functools.partial(send_email, "ada@example.org"))
    assert spec.bind({"body": "hi"}) == {"body": "hi", "cc": None}


# --- the registry ---------------------------------------------------------------------------


def test_the_registry_takes_decorated_functions_plain_functions_and_specs() -> None:
    @tool(name="lookup")
    async def find(query: str) -> str:
        return query

    registry = ToolRegistry([find, send_email])
    registry.register(ToolSpec(name="other", fn=send_email))
    assert registry.names() == ["lookup", "other", "send_email"]
    assert registry.get("lookup").fn is find


def test_an_unknown_tool_error_lists_the_known_names() -> None:
    registry = ToolRegistry([send_email])
    with pytest.raises(UnknownTool, match=r"no tool named 'sned_email' .*known: send_email\)"):
        registry.get("sned_email")


def test_two_tools_cannot_share_a_name() -> None:
    registry = ToolRegistry([send_email])
    with pytest.raises(ConfigurationError, match=r"tool 'send_email' is already registered"):
        registry.register(ToolSpec(name="send_email", fn=send_email))


def test_registering_something_that_is_not_a_tool_says_what_is_accepted() -> None:
    with pytest.raises(ConfigurationError, match=r"cannot register 42 as a tool; pass an async"):
        ToolRegistry().register(42)


# --- arguments ------------------------------------------------------------------------------


def test_bind_fills_in_defaults() -> None:
    spec = spec_of(send_email)
    assert spec.bind({"body": "hi", "to": "ada"}) == {"to": "ada", "body": "hi", "cc": None}


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"to": "ada"}, r"tool 'send_email': arguments do not fit .*missing a required argument: "
                        r"'body'; expected send_email\(to, body, cc=None\)"),
        ({"to": "ada", "body": "hi", "bcc": "x"}, r"unexpected keyword argument 'bcc'"),
    ],
)
def test_bad_arguments_name_the_tool_and_what_is_wrong(
    arguments: dict[str, Any], match: str
) -> None:
    with pytest.raises(ToolArgumentsInvalid, match=match):
        spec_of(send_email).bind(arguments)


def test_a_call_that_misses_one_argument_and_misnames_another_is_told_both() -> None:
    with pytest.raises(ToolArgumentsInvalid, match=r"missing a required argument: 'to'; got an "
                       r"unexpected keyword argument 'too'; expected send_email\(to, body, "
                       r"cc=None\)$"):
        spec_of(send_email).bind({"too": "ada", "body": "hi"})
    with pytest.raises(ToolArgumentsInvalid, match=r"missing required arguments: 'to', 'body'; "
                       r"got unexpected keyword arguments 'x', 'y'"):
        spec_of(send_email).bind({"x": 1, "y": 2})


def test_extra_keywords_of_a_var_keyword_tool_are_flattened() -> None:
    async def post(path: str, **fields: Any) -> None: ...

    spec = ToolSpec(name="post", fn=post)
    assert spec.bind({"path": "/x", "b": 2, "a": 1}) == {"path": "/x", "b": 2, "a": 1}


@pytest.mark.anyio
async def test_the_key_parameter_is_filled_by_the_proxy_not_by_callers() -> None:
    async def charge(amount: int, idempotency_key: str | None) -> str:
        return f"{amount}:{idempotency_key}"

    spec = ToolSpec(name="charge", fn=charge, key_param="idempotency_key")
    with pytest.raises(ToolArgumentsInvalid, match=r"'idempotency_key' carries the idempotency"):
        spec.bind({"amount": 5, "idempotency_key": "mine"})
    assert await spec.invoke(spec.bind({"amount": 5}), key="k9") == "5:k9"


@pytest.mark.anyio
async def test_invoke_calls_the_function_with_the_bound_arguments() -> None:
    spec = spec_of(send_email)
    assert await spec.invoke(spec.bind({"to": "ada", "body": "hi"}), key="ignored") == "sent to ada"


@pytest.mark.anyio
async def test_a_verify_hook_answers_done_with_the_result_or_not_done() -> None:
    spec = ToolSpec(name="mail", fn=send_email, verify=already_sent)
    assert spec.verify is not None
    match await spec.verify("k1", {}):
        case Done(result=result):
            assert result == "receipt-1"
        case NotDone():
            pytest.fail("k1 was sent")
    assert await spec.verify("k2", {}) == NotDone()


# --- arguments checked and converted against the annotations ---------------------------------


class Room(msgspec.Struct, frozen=True):
    number: int


async def book(room: Room, nights: float, guests: list[str] | None = None,
               note: Any = None, when: datetime.date | None = None) -> str:
    return f"{room.number}"


def test_arguments_are_converted_to_their_annotated_types() -> None:
    bound = spec_of(book).bind({"room": {"number": 7}, "nights": 2, "guests": ("ada",),
                                "when": "2025-01-31"})
    assert bound == {"room": Room(7), "nights": 2.0, "guests": ["ada"], "note": None,
                     "when": datetime.date(2025, 1, 31)}
    assert type(bound["nights"]) is float


def test_defaults_are_taken_as_they_are_and_unannotated_arguments_take_anything() -> None:
    odd = object()
    assert spec_of(book).bind({"room": Room(1), "nights": 1.0, "note": odd})["note"] is odd


@pytest.mark.parametrize(
    ("arguments", "match", "attributes"),
    [
        ({"room": Room(1), "nights": "two"},
         r"tool 'book': arguments do not fit its signature: argument 'nights' must be float, "
         r"got str 'two' \(Expected `float`, got `str`\); pass a value of that type",
         ("nights", "float", "str")),
        ({"room": Room(1), "nights": True}, r"argument 'nights' must be float, got bool True",
         ("nights", "float", "bool")),
        ({"room": {"number": "7"}, "nights": 1},
         r"argument 'room' must be Room, got dict .*Expected `int`, got `str` - at `room.number`",
         ("room", "Room", "dict")),
        ({"room": Room(1), "nights": 1, "guests": ["ada", 3]},
         r"argument 'guests' must be list\[str\] \| None, .*at `guests\[1\]`",
         ("guests", "list[str] | None", "list")),
    ],
)
def test_an_argument_that_does_not_fit_its_annotation_names_it_and_both_types(
    arguments: dict[str, Any], match: str, attributes: tuple[str, str, str],
) -> None:
    with pytest.raises(ToolArgumentsInvalid, match=match) as caught:
        spec_of(book).bind(arguments)
    assert (caught.value.argument, caught.value.expected, caught.value.given) == attributes


def test_extra_keywords_are_checked_against_the_var_keyword_annotation() -> None:
    async def tag(path: str, **counts: int) -> None: ...

    spec = ToolSpec(name="tag", fn=tag)
    assert spec.bind({"path": "/x", "a": 1}) == {"path": "/x", "a": 1}
    with pytest.raises(ToolArgumentsInvalid, match=r"argument 'b' must be int, got str 'x'"):
        spec.bind({"path": "/x", "b": "x"})


def test_annotations_that_do_not_resolve_or_msgspec_cannot_check_take_anything() -> None:
    class Local:
        pass

    class Other:
        pass

    async def handle(item: Local, either: Local | Other, count: int) -> None: ...

    spec = ToolSpec(name="handle", fn=handle)  # `Local` is a string this module cannot resolve
    assert spec.bind({"item": 1, "either": "x", "count": 2}) == {
        "item": 1, "either": "x", "count": 2}
    with pytest.raises(ToolArgumentsInvalid, match=r"argument 'count' must be int"):
        spec.bind({"item": 1, "either": "x", "count": "2"})


def test_the_arguments_of_an_http_tool_are_checked_too() -> None:
    orders = HttpTool("orders", "POST", "https://api.example.org/orders", session=None)
    with pytest.raises(ToolArgumentsInvalid, match=r"argument 'params' must be "
                       r"Mapping\[str, str\] \| None"):
        orders.spec.bind({"params": {"page": 2}})


# --- the type results are recorded and replayed as ----------------------------------------


class Opaque:
    """A class msgspec decodes only through a dec_hook."""


async def either() -> str | bytes:
    return "x"


async def opaque() -> Opaque:
    return Opaque()


async def opaques() -> dict[str, list[Opaque]]:
    return {}


@pytest.mark.parametrize(("fn", "shown"), [
    (either, r"str \| bytes"), (opaque, "Opaque"), (opaques, r"dict\[str, list\[Opaque\]\]"),
])
def test_a_side_effecting_tool_whose_results_cannot_be_decoded_is_refused_at_registration(
    fn: Any, shown: str,
) -> None:
    with pytest.raises(ConfigurationError, match=rf"tool '{fn.__name__}': its return annotation "
                       rf"{shown} cannot be decoded \(.*\); the results of a side-effecting tool "
                       r"are recorded and replayed as it, so annotate a type msgspec decodes"):
        ToolRegistry([fn])
    # A read-only tool's results are never recorded: any annotation will do.
    assert ToolRegistry([tool(read_only=True)(fn)]).names() == [fn.__name__]


def test_a_return_annotation_that_does_not_resolve_is_refused_at_registration() -> None:
    class Local(msgspec.Struct):
        n: int

    async def make() -> Local:  # a string this module cannot resolve
        return Local(1)

    with pytest.raises(ConfigurationError, match=r"tool 'make': its return annotation 'Local' "
                       r"does not resolve \(NameError: .*\); .* define the type at module level, "
                       r"or annotate the tool -> Any"):
        ToolRegistry([make])


@tool  # declared before the class it returns: resolved when registered, not here
async def made_later() -> Later:
    return Later(1)


class Later(msgspec.Struct):
    n: int


async def untyped():  # type: ignore[no-untyped-def]
    return (1, 2)


def test_results_decode_as_the_return_annotation_resolved_at_registration() -> None:
    registry = ToolRegistry([made_later, send_email])
    assert registry.results("made_later").decode(msgspec.msgpack.encode({"n": 1})) == Later(1)
    assert registry.results("send_email").decode(msgspec.msgpack.encode("ok")) == "ok"
    # Without an annotation, results come back as MessagePack's plain values.
    assert result_decoder(spec_of(untyped)).decode(msgspec.msgpack.encode((1, 2))) == [1, 2]


# --- how long a call may run under the tool's own limits ------------------------------------


def test_the_longest_run_covers_every_attempt_and_every_backoff_at_its_longest() -> None:
    single = ToolSpec(name="single", fn=send_email, timeout=2.0)
    assert single.longest_run == 2.0
    retried = ToolSpec(name="retried", fn=send_email, retry=Retry(
        attempts=4, base_delay=1.0, max_delay=3.0, attempt_timeout=10.0))
    assert retried.longest_run == 4 * 10.0 + (1.0 + 2.0 + 3.0)
    verified = ToolSpec(name="verified", fn=send_email, verify=already_sent, verify_timeout=5.0,
                        retry=Retry(attempts=2, base_delay=0.5, attempt_timeout=10.0))
    # verify may run for a key found in flight, then after each attempt
    assert verified.longest_run == 2 * 10.0 + 3 * 5.0 + 0.5
    limited = ToolSpec(name="limited", fn=send_email, retry=Retry(attempts=9, deadline=30.0))
    assert limited.longest_run == 30.0
    assert ToolSpec(name="plain", fn=send_email, read_only=True).longest_run is None
