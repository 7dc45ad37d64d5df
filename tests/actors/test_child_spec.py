"""Tests of roost/actors/child_spec.py: ChildSpec, SupervisorSpec and Backoff validation and defaults.

Every bad value raises `ConfigurationError` naming the field and the value.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import roost
from roost import Backoff, ChildSpec, ConfigurationError, Supervisor, SupervisorSpec


class Worker(roost.Actor):
    async def receive(self, message: Any) -> Any:
        return message


class NotAnActor:
    pass


# --- ChildSpec ------------------------------------------------------------------------------


def test_a_child_spec_has_its_documented_defaults() -> None:
    spec = ChildSpec(factory=Worker)
    assert spec.name is None
    assert spec.args == ()
    assert spec.kwargs == {}
    assert spec.restart == "permanent"
    assert spec.shutdown_timeout == 5.0
    assert spec.capacity == 1000
    assert spec.overflow == "wait"
    assert spec.poison_after == 3


def test_a_child_spec_is_frozen_and_keyword_only() -> None:
    spec = ChildSpec(factory=Worker, name="w")
    with pytest.raises(AttributeError):
        spec.restart = "temporary"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ChildSpec(Worker)  # type: ignore[misc]


def test_a_child_spec_accepts_every_restart_type_and_overflow_policy() -> None:
    for restart in ("permanent", "transient", "temporary"):
        assert ChildSpec(factory=Worker, restart=restart).restart == restart  # type: ignore[arg-type]
    for overflow in ("wait", "drop_newest", "drop_oldest", "fail"):
        assert ChildSpec(factory=Worker, overflow=overflow).overflow == overflow  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("factory", NotAnActor, r"factory must be an Actor subclass or a SupervisorSpec, got .*NotAnActor"),
        ("factory", "Worker", r"factory must be .*got 'Worker'"),
        ("factory", Worker(), r"factory must be .*got <"),  # an instance, not the class
        ("name", "", r"name must be a non-empty string without '/', got ''"),
        ("name", "a/b", r"name must be .*got 'a/b'"),
        ("name", 7, r"name must be .*got 7"),
        ("args", [1, 2], r"args must be a tuple, got \[1, 2\]"),
        ("restart", "sometimes", r"restart must be one of permanent, transient, temporary, got 'sometimes'"),
        ("restart", None, r"restart must be one of .*got None"),
        ("shutdown_timeout", -1.5,
         r"shutdown_timeout must be a number of seconds >= 0 \(0: stop at once, math\.inf: wait "
         r"for ever\), got -1\.5"),
        ("shutdown_timeout", -math.inf, r"shutdown_timeout must be .*got -inf"),
        ("shutdown_timeout", math.nan, r"shutdown_timeout must be .*got nan"),
        ("shutdown_timeout", True, r"shutdown_timeout must be .*got True"),
        ("shutdown_timeout", "5", r"shutdown_timeout must be .*got '5'"),
        ("capacity", 0, r"capacity must be a whole number >= 1, got 0"),
        ("capacity", 2.5, r"capacity must be a whole number >= 1, got 2\.5"),
        ("capacity", True, r"capacity must be .*got True"),
        ("overflow", "spill", r"overflow must be one of wait, drop_newest, drop_oldest, fail, got 'spill'"),
        ("poison_after", 0, r"poison_after must be a whole number >= 1, got 0"),
        ("poison_after", 1.0, r"poison_after must be .*got 1\.0"),
    ],
)
def test_a_bad_child_spec_field_is_named_with_its_value(field: str, value: Any, pattern: str) -> None:
    fields: dict[str, Any] = {"factory": Worker, "name": "w"}
    fields[field] = value
    with pytest.raises(ConfigurationError, match=pattern):
        ChildSpec(**fields)


class Sized(roost.Actor):
    def __init__(self, width: int, *, height: int = 1) -> None:
        self.area = width * height

    async def receive(self, message: Any) -> Any:
        return self.area


class TakesAnything(roost.Actor):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    async def receive(self, message: Any) -> Any:
        return self.settings


@pytest.mark.parametrize("kwargs", [None, [("width", 2)], {1: 2}])
def test_child_spec_kwargs_that_are_not_a_dict_by_name_are_refused(kwargs: Any) -> None:
    with pytest.raises(ConfigurationError,
                       match=r"^ChildSpec\(name='w'\): kwargs must be a dict of the actor's "
                             r"__init__ keyword arguments by name, got "):
        ChildSpec(factory=Sized, name="w", kwargs=kwargs)


def test_a_child_spec_kwarg_that_init_does_not_take_is_refused_when_the_spec_is_built() -> None:
    # As spawn does: not at the child's start, as ActorStartFailed wrapping a TypeError.
    with pytest.raises(ConfigurationError, match=(
            r"^ChildSpec\(name='w'\) kwargs: unknown option 'hieght' \(did you mean 'height'\?\); "
            r"valid options are width, height \(Sized.__init__'s parameters\)$")):
        ChildSpec(factory=Sized, name="w", kwargs={"width": 2, "hieght": 3})
    with pytest.raises(ConfigurationError,
                       match=r"unknown option 'size'; valid options are none from "
                             r"Worker.__init__, which takes no keywords$"):
        ChildSpec(factory=Worker, kwargs={"size": 3})
    with pytest.raises(ConfigurationError,
                       match=r"^ChildSpec\(name='p-1'\) kwargs: unknown option 'hieght'"):
        roost.Pool.spec("p", Sized, size=2, kwargs={"width": 1, "hieght": 1})


def test_child_spec_kwargs_are_free_for_an_init_that_takes_any_keyword() -> None:
    assert ChildSpec(factory=Sized, kwargs={"width": 2, "height": 3}).kwargs == {
        "width": 2, "height": 3}
    assert ChildSpec(factory=TakesAnything, kwargs={"anything": 1}).kwargs == {"anything": 1}


@pytest.mark.parametrize("timeout", [0, 0.0, math.inf])
def test_shutdown_timeout_takes_0_to_stop_at_once_and_inf_to_wait_for_ever(timeout: float) -> None:
    # OTP's brutal_kill and infinity.
    assert ChildSpec(factory=Worker, shutdown_timeout=timeout).shutdown_timeout == timeout


def test_a_child_spec_error_names_the_child() -> None:
    with pytest.raises(ConfigurationError, match=r"ChildSpec\(name='drafter'\): restart"):
        ChildSpec(factory=Worker, name="drafter", restart="always")  # type: ignore[arg-type]


def test_a_child_spec_takes_a_nested_supervisor_spec_and_its_name() -> None:
    nested = Supervisor.spec("inner", children=[ChildSpec(factory=Worker, name="w")])
    spec = ChildSpec(factory=nested)
    assert spec.child_name == "inner"
    assert ChildSpec(factory=nested, name="other").child_name == "other"
    assert ChildSpec(factory=Worker).child_name is None


# --- SupervisorSpec -------------------------------------------------------------------------


def test_supervisor_spec_has_otp_defaults_and_wraps_nested_supervisors() -> None:
    nested = Supervisor.spec("inner")
    spec = Supervisor.spec("outer", children=[ChildSpec(factory=Worker, name="w"), nested])
    assert isinstance(spec, SupervisorSpec)
    assert (spec.strategy, spec.max_restarts, spec.within) == ("one_for_one", 3, 5.0)
    assert spec.backoff == Backoff()
    assert spec.actor is Supervisor
    assert isinstance(spec.children, tuple)
    wrapped = spec.children[1]
    assert isinstance(wrapped, ChildSpec)
    assert wrapped.factory is nested
    assert wrapped.restart == "permanent"
    assert wrapped.child_name == "inner"


def test_a_supervisor_subclass_spec_runs_the_subclass() -> None:
    class Custom(Supervisor):
        pass

    assert Custom.spec("custom").actor is Custom


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"name": ""}, r"name must be a non-empty string without '/', got ''"),
        ({"name": "a/b"}, r"name must be .*got 'a/b'"),
        ({"strategy": "all_for_one"},
         r"strategy must be one of one_for_one, one_for_all, rest_for_one, got 'all_for_one'"),
        ({"max_restarts": -1}, r"max_restarts must be a whole number >= 0, got -1"),
        ({"max_restarts": 2.0}, r"max_restarts must be .*got 2\.0"),
        ({"within": 0}, r"within must be a number of seconds > 0, got 0"),
        ({"within": -5.0}, r"within must be .*got -5\.0"),
        ({"within": math.inf}, r"within must be .*got inf"),
        ({"children": ["worker"]}, r"children must be ChildSpecs, got 'worker'"),
        ({"children": [ChildSpec(factory=Worker, name="w"), ChildSpec(factory=Worker, name="w")]},
         r"two children are named 'w'"),
    ],
)
def test_a_bad_supervisor_spec_field_is_named_with_its_value(kwargs: dict[str, Any], pattern: str) -> None:
    fields: dict[str, Any] = {"name": "app", **kwargs}
    with pytest.raises(ConfigurationError, match=pattern):
        Supervisor.spec(**fields)


def test_a_supervisor_spec_error_names_the_supervisor() -> None:
    with pytest.raises(ConfigurationError, match=r"Supervisor 'app': max_restarts"):
        Supervisor.spec("app", max_restarts=-3)


def test_an_unknown_supervisor_option_is_refused_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match=(
            r"^Supervisor 's': unknown options 'max_restart' \(did you mean 'max_restarts'\?\), "
            r"'stratgy' \(did you mean 'strategy'\?\); valid options are strategy, "
            r"max_restarts, within, backoff, children$")):
        Supervisor.spec("s", max_restart=0, stratgy="one_for_all")


def test_a_supervisor_subclass_takes_the_options_it_declares() -> None:
    class Tagged(Supervisor):
        spec_options = ("tag",)

    assert Tagged.spec("t", tag="blue").options == {"tag": "blue"}
    with pytest.raises(ConfigurationError,
                       match=r"unknown option 'colour'; valid options are .*children, tag$"):
        Tagged.spec("t", colour="blue")


def test_zero_max_restarts_is_a_valid_supervisor_spec() -> None:
    assert Supervisor.spec("app", max_restarts=0).max_restarts == 0


# --- Backoff --------------------------------------------------------------------------------


def test_backoff_defaults() -> None:
    backoff = Backoff()
    assert (backoff.initial, backoff.maximum, backoff.multiplier, backoff.jitter,
            backoff.reset_after) == (0.01, 1.0, 2.0, 0.2, 5.0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"initial": -0.1}, r"initial must be a number of seconds >= 0, got -0\.1"),
        ({"initial": math.nan}, r"initial must be .*got nan"),
        ({"maximum": -1.0}, r"maximum must be a number of seconds >= 0, got -1\.0"),
        ({"initial": 2.0, "maximum": 1.0}, r"maximum \(1\.0\) must be >= initial \(2\.0\)"),
        ({"multiplier": 0.5}, r"multiplier must be >= 1, got 0\.5"),
        ({"multiplier": math.nan}, r"multiplier must be >= 1, got nan"),
        ({"multiplier": "2"}, r"multiplier must be >= 1, got '2'"),
        ({"jitter": 1.5}, r"jitter must be between 0 and 1, got 1\.5"),
        ({"jitter": -0.1}, r"jitter must be between 0 and 1, got -0\.1"),
        ({"reset_after": -1}, r"reset_after must be a number of seconds >= 0, got -1"),
    ],
)
def test_a_bad_backoff_field_is_named_with_its_value(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigurationError, match=pattern):
        Backoff(**kwargs)


def test_the_first_restart_is_immediate_then_delays_double_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.01, maximum=0.05, multiplier=2.0, jitter=0.0)
    delays = [backoff.delay(n, 0.5) for n in range(1, 8)]
    assert delays == pytest.approx([0.0, 0.01, 0.02, 0.04, 0.05, 0.05, 0.05])


def test_jitter_only_shortens_a_delay() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, multiplier=2.0, jitter=0.25)
    assert backoff.delay(3, 0.0) == pytest.approx(2.0)
    assert backoff.delay(3, 0.5) == pytest.approx(1.75)
    assert backoff.delay(3, 0.999999) == pytest.approx(1.5, abs=1e-5)
    assert backoff.delay(10, 0.0) == pytest.approx(8.0)


def test_a_huge_multiplier_is_capped_at_the_maximum_instead_of_overflowing() -> None:
    # The validator accepts any multiplier >= 1; the delay must still be bounded.
    backoff = Backoff(initial=1.0, maximum=2.0, multiplier=1e6, jitter=0.0)
    assert backoff.delay(100, 0.0) == 2.0


def test_a_slowly_growing_backoff_still_reaches_its_maximum() -> None:
    # 0.001 * 1.1 ** 198 is far above 1.0, so the 200th restart in a row waits the maximum.
    backoff = Backoff(initial=0.001, maximum=1.0, multiplier=1.1, jitter=0.0)
    assert backoff.delay(200, 0.0) == 1.0


backoffs = st.builds(
    lambda initial, extra, multiplier, jitter: Backoff(
        initial=initial, maximum=initial + extra, multiplier=multiplier, jitter=jitter
    ),
    initial=st.one_of(st.just(0.0), st.floats(1e-4, 10.0)),
    extra=st.floats(0.0, 100.0),
    multiplier=st.floats(1.0, 100.0),
    jitter=st.floats(0.0, 1.0),
)
rands = st.floats(0.0, 1.0, exclude_max=True)


def _undelayed(backoff: Backoff, consecutive: int) -> float:
    """min(maximum, initial * multiplier ** (consecutive - 2)), computed without overflow."""
    if backoff.initial == 0.0:
        return 0.0
    exponent = (consecutive - 2) * math.log(backoff.multiplier)
    if exponent >= math.log(backoff.maximum / backoff.initial):
        return backoff.maximum
    return min(backoff.maximum, backoff.initial * math.exp(exponent))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(backoff=backoffs, consecutive=st.integers(1, 500), rand=rands)
def test_a_backoff_delay_stays_between_its_jittered_base_and_the_maximum(
    backoff: Backoff, consecutive: int, rand: float
) -> None:
    delay = backoff.delay(consecutive, rand)
    assert 0.0 <= delay <= backoff.maximum
    if consecutive == 1:
        assert delay == 0.0
    else:
        base = _undelayed(backoff, consecutive)
        assert delay <= base * (1 + 1e-9)
        assert delay >= base * (1.0 - backoff.jitter) * (1 - 1e-9)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(backoff=backoffs, consecutive=st.integers(1, 500), rand=rands)
def test_a_backoff_delay_never_shrinks_as_restarts_follow_in_a_row(
    backoff: Backoff, consecutive: int, rand: float
) -> None:
    now, after = backoff.delay(consecutive, rand), backoff.delay(consecutive + 1, rand)
    assert after >= now * (1 - 1e-9)
    # Without jitter the delay is the upper bound for any draw.
    assert backoff.delay(consecutive, 0.0) >= now


class Quick(roost.Actor):
    shutdown_timeout = 0.2

    async def receive(self, message: object) -> None:
        return None


def test_a_child_spec_takes_the_actor_classs_shutdown_timeout_unless_it_sets_one() -> None:
    assert ChildSpec(factory=Quick).shutdown_timeout == 0.2
    assert ChildSpec(factory=Quick, shutdown_timeout=5.0).shutdown_timeout == 5.0
    assert roost.Pool.spec("quick", Quick, size=2).children[0].shutdown_timeout == 0.2
