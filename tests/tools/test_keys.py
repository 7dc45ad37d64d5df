"""Tests of roost/tools/keys.py: key checks, fingerprints and derived idempotency keys."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from roost.errors import ToolArgumentsInvalid, ToolCallOptionInvalid
from roost.tools.keys import (
    check_key,
    derive_key,
    fingerprint,
    fresh_key,
    message_unit,
    step_unit,
)


class Address(msgspec.Struct):
    name: str
    email: str


# --- derived keys ---------------------------------------------------------------------------


def test_keys_are_stable_across_processes_and_hash_seeds() -> None:
    # Golden value: keys live in the ledger, so the same call must keep its key.
    # Changing the derivation means bumping its scheme tag and updating this value.
    key = derive_key("mail", step_unit("run-1", "send"), 0)
    assert key == "fb1d83ca7d3ed101cb8c9f4845f618ad735f6f8fa537886291a55838ac32256f"


def test_the_key_names_the_tool_the_unit_of_work_and_the_calls_number_in_it() -> None:
    keys = {
        derive_key("mail", step_unit("run-1", "send"), 0),
        derive_key("mail", step_unit("run-2", "send"), 0),
        derive_key("mail", step_unit("run-1", "resend"), 0),
        derive_key("mail", step_unit("run-1", "send/0"), 0),
        derive_key("mail", step_unit("run-1", "send/fallback"), 0),
        derive_key("mail", step_unit("run-1", "send"), 1),
        derive_key("sms", step_unit("run-1", "send"), 0),
        derive_key("mail", message_unit("run-1"), 0),
        derive_key("mail", message_unit("m-1"), 0),
    }
    assert len(keys) == 9
    assert derive_key("mail", step_unit("run-1", "send"), 0) == derive_key(
        "mail", step_unit("run-1", "send"), 0)


def test_a_fresh_key_is_a_valid_key_that_never_repeats() -> None:
    first, second = fresh_key(), fresh_key()
    assert first != second
    check_key("mail", first)


# --- checking a given key -------------------------------------------------------------------


class Name(str):
    pass


@pytest.mark.parametrize("key", ["k", "order-42", "x" * 255, "commande-été", " ", "é" * 127])
def test_a_key_is_any_non_empty_str_of_at_most_255_bytes_of_utf8(key: str) -> None:
    assert check_key("mail", key) == key


def test_a_str_subclass_is_taken_as_its_plain_value() -> None:
    key = check_key("mail", Name("order-42"))

    assert key == "order-42" and type(key) is str


@pytest.mark.parametrize(
    ("key", "match", "given"),
    [
        ("", r"tool 'mail': .*key='' is not a valid idempotency key; pass a non-empty str of "
             r"at most 255 bytes of UTF-8", "str"),
        ("x" * 256, r"key='xxxxxxxxxxxxxxxxxxxx'\.\.\. \(256 bytes of UTF-8\) is not a valid", "str"),
        (123, r"key=123 \(int\) is not a valid idempotency key", "int"),
        (b"k", r"key=b'k' \(bytes\) is not a valid", "bytes"),
        (None, r"key=None \(NoneType\)", "NoneType"),
        ("é" * 128, r"\(256 bytes of UTF-8\) is not a valid", "str"),
        ("\udc80abc", r"not valid Unicode text", "str"),
    ],
)
def test_any_other_key_is_refused_naming_the_tool_and_the_value(
    key: object, match: str, given: str
) -> None:
    with pytest.raises(ToolArgumentsInvalid, match=match) as caught:
        check_key("mail", key)
    assert (caught.value.tool, caught.value.argument, caught.value.given) == ("mail", "key", given)


def test_an_invalid_key_is_an_option_of_the_call_not_an_argument_that_does_not_fit() -> None:
    with pytest.raises(ToolCallOptionInvalid) as caught:
        check_key("mail", "")
    assert isinstance(caught.value, ToolArgumentsInvalid)  # what callers already catch
    assert str(caught.value).startswith("tool 'mail': key='' is not a valid idempotency key;")
    assert "signature" not in str(caught.value)


# --- fingerprints ---------------------------------------------------------------------------


def test_the_same_arguments_in_another_order_give_the_same_fingerprint() -> None:
    one = {"to": "ada", "body": "hi", "meta": {"b": 1, "a": [1, 2]}}
    two = {"meta": {"a": [1, 2], "b": 1}, "body": "hi", "to": "ada"}
    assert fingerprint(one, tool="mail") == fingerprint(two, tool="mail")


def test_fingerprints_are_stable_across_processes_and_hash_seeds() -> None:
    # Golden value: fingerprints live in the ledger (set order varies with PYTHONHASHSEED).
    arguments = {"to": "ada", "tags": {"b", "a", "c"}, "n": 2**70, "x": math.nan}
    assert fingerprint(arguments, tool="mail") == (
        "65d3cbc9eecf238aa1f40f8a2c45d373f65d974835c77dadde57bde5f0ecabbc")


@pytest.mark.parametrize(
    ("one", "two"),
    [
        ({"to": "ada"}, {"to": "bob"}),
        ({"n": 1}, {"n": "1"}),
        ({"n": 1}, {"n": 1.5}),
        ({"n": 1}, {"n": 1.0}),
        ({"n": 1}, {"n": True}),
        ({"n": "a"}, {"n": b"a"}),
        ({"n": 2**70}, {"n": 2**70 + 1}),
        ({"n": 2**70}, {"n": str(2**70)}),
        ({"to": "ada"}, {"to": "ada", "cc": None}),
        ({"who": Address("Ada", "a@x")}, {"who": Address("Ada", "b@x")}),
    ],
)
def test_different_arguments_give_different_fingerprints(
    one: dict[str, Any], two: dict[str, Any]
) -> None:
    assert fingerprint(one, tool="mail") != fingerprint(two, tool="mail")


def test_none_nan_inf_and_minus_inf_give_four_different_fingerprints() -> None:
    values = [None, math.nan, math.inf, -math.inf]
    assert len({fingerprint({"x": value}, tool="mail") for value in values}) == 4
    assert len({fingerprint({"x": [value, 2**70]}, tool="mail") for value in values}) == 4


def test_an_argument_that_cannot_be_encoded_is_named() -> None:
    with pytest.raises(ToolArgumentsInvalid, match=r"tool 'mail': .*argument 'handle' \(object\) "
                       r"cannot be hashed .*must be JSON-encodable") as caught:
        fingerprint({"to": "ada", "handle": object()}, tool="mail")
    assert (caught.value.argument, caught.value.given) == ("handle", "object")


def test_a_dict_argument_with_keys_that_are_not_strings_is_named() -> None:
    with pytest.raises(ToolArgumentsInvalid, match=r"argument 'table' \(dict\) cannot be hashed"):
        fingerprint({"table": {1: "a"}}, tool="mail")
