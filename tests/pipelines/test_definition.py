"""Tests of roost/pipelines/definition.py: a pipeline's graph is checked when it is built.

Every definition error is a `PipelineDefinitionError` that names the pipeline and
the step at fault, raised by `Pipeline(...)` before anything runs.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import roost
from roost.errors import ConfigurationError, PipelineDefinitionError
from roost.pipelines.definition import Pipeline, RunStep, Step, StepFailure
from roost.pipelines.gate import Gate


class Worker(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        return message.step


def args(results: Any, input: Any) -> dict[str, Any]:
    return {}


def test_a_valid_pipeline_keeps_its_steps_by_name_and_orders_them_after_their_dependencies(
) -> None:
    pipeline = Pipeline("p", [
        Step("d", Worker, after=["b", "c"]),
        Step("b", Worker, after="a"),
        Step("c", tool="send", args=args, after="a"),
        Step("a", Worker),
    ])

    assert list(pipeline.steps) == ["d", "b", "c", "a"]
    order = pipeline.order
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("a") < order.index("c") < order.index("d")
    assert repr(pipeline) == f"Pipeline('p', steps={order})"


def test_after_takes_one_name_or_a_list_of_names() -> None:
    assert Step("b", Worker, after="a").after == ("a",)
    assert Step("c", Worker, after=["a", "b"]).after == ("a", "b")
    assert Step("a", Worker).after == ()


def test_a_definition_error_is_a_configuration_error() -> None:
    assert issubclass(PipelineDefinitionError, ConfigurationError)


def test_two_steps_with_one_name_are_refused_naming_the_step() -> None:
    with pytest.raises(PipelineDefinitionError, match="pipeline 'p': two steps are named 'a'"):
        Pipeline("p", [Step("a", Worker), Step("b", Worker), Step("a", Worker, after="b")])


def test_a_step_after_an_unknown_step_is_refused_naming_both() -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p', step 'b': comes after unknown step 'nope'; known: a, b"):
        Pipeline("p", [Step("a", Worker), Step("b", Worker, after=["a", "nope"])])


def test_a_cycle_is_refused_with_its_path() -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p': step 'a' is in a cycle: a -> c -> b -> a"):
        Pipeline("p", [
            Step("a", Worker, after="c"),
            Step("b", Worker, after="a"),
            Step("c", Worker, after="b"),
        ])


def test_a_step_after_itself_is_a_cycle() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"step 'a' is in a cycle: a -> a"):
        Pipeline("p", [Step("a", Worker, after="a")])


def test_a_cycle_below_a_valid_start_is_found() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"step 'b' is in a cycle: b -> c -> b"):
        Pipeline("p", [
            Step("a", Worker),
            Step("b", Worker, after=["a", "c"]),
            Step("c", Worker, after="b"),
        ])


def test_a_step_with_neither_worker_nor_tool_is_refused() -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p', step 'idle': give exactly one of worker="):
        Pipeline("p", [Step("idle")])


def test_a_step_with_both_worker_and_tool_is_refused() -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p', step 'both': give exactly one of worker="):
        Pipeline("p", [Step("both", Worker, tool="send", args=args)])


def test_a_tool_step_without_args_is_refused() -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p', step 'send': a tool step needs args="):
        Pipeline("p", [Step("send", tool="send_email")])


@pytest.mark.parametrize("worker", [object, Worker(), "Worker", len])
def test_a_worker_that_is_not_an_actor_subclass_is_refused(worker: Any) -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p', step 'a': worker must be an Actor subclass"):
        Pipeline("p", [Step("a", worker)])


@pytest.mark.parametrize("fallback", [object, Worker(), 3])
def test_a_fallback_that_is_neither_an_actor_subclass_nor_a_tool_name_is_refused(
        fallback: Any) -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p', step 'a': fallback must be an Actor subclass or a tool"):
        Pipeline("p", [Step("a", Worker, fallback=fallback)])


def test_a_worker_step_whose_fallback_is_a_tool_needs_args_for_the_tool() -> None:
    # A tool fallback is called "with the same request": a worker step has no tool
    # arguments to call it with, so the definition must say so (today the run fails
    # at run time with a bare "AssertionError: " from RunActor._once).
    with pytest.raises(PipelineDefinitionError, match=r"pipeline 'p', step 'a': .*args="):
        Pipeline("p", [Step("a", Worker, fallback="cached_answer")])


@pytest.mark.parametrize("timeout", [0, -1.0, "5"])
def test_a_timeout_that_is_not_a_positive_number_is_refused(timeout: Any) -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p', step 'a': timeout must be > 0 seconds"):
        Pipeline("p", [Step("a", Worker, timeout=timeout)])


@pytest.mark.parametrize("workers", [0, True, 1.5])
def test_a_pool_size_that_is_not_a_whole_number_of_at_least_one_is_refused(workers: Any) -> None:
    with pytest.raises(PipelineDefinitionError,
                       match=r"pipeline 'p', step 'a': workers must be a whole number >= 1"):
        Pipeline("p", [Step("a", Worker, workers=workers)])


BAD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"after": 5}, "after must be a step's name or a list of step names, got 5"),
    ({"after": None}, "after must be a step's name or a list of step names, got None"),
    ({"after": [None]}, "after must be a step's name or a list of step names, got (None,)"),
    ({"after": [["a"]]}, "after must be a step's name or a list of step names, got (['a'],)"),
    ({"retry": 3}, "retry must be a roost.Retry (say roost.Retry(attempts=3)) or None for one "
                   "attempt, got 3"),
    ({"when": 5}, "when must be a function of the results returning a bool, or None, got 5"),
    ({"map": [1, 2]}, "map must be a function of the results returning the list of items, or "
                      "None, got [1, 2]"),
    ({"worker": None, "tool": "send", "args": {"to": "ada"}},
     "args must be a function of the results and the input returning the tool's keyword "
     "arguments, got {'to': 'ada'}"),
    ({"worker": None, "tool": 5, "args": args}, "tool must be the name of a registered tool, got 5"),
    ({"optional": "no"}, "optional must be True or False, got 'no'"),
    ({"output": 5}, "output must be a type msgspec can decode (say int, list[str] or a "
                    "msgspec.Struct), got 5: Type '5' is not supported"),
    ({"output": int | str | bytes}, "output must be a type msgspec can decode"),
    ({"timeout": float("inf")}, "timeout must be > 0 seconds (a finite number), got inf"),
    ({"timeout": True}, "timeout must be > 0 seconds (a finite number), got True"),
    ({"workers": True}, "workers must be a whole number >= 1, got True"),
    ({"capacity": False}, "capacity must be a whole number >= 1, got False"),
    ({"capacity": 2.0}, "capacity must be a whole number >= 1, got 2.0"),
    ({"pool": ""}, "pool must be a non-empty string (a pool's name), got ''"),
    ({"pool": 5}, "pool must be a non-empty string (a pool's name), got 5"),
    ({"fallback": ""}, "fallback must be an Actor subclass or a tool name, got ''"),
    ({"gate": "yes"}, "gate must be a roost.Gate or None, got 'yes'"),
    ({"review": {"assignees": ["ana"]}}, "review must be a roost.Gate or None, got {'assignees'"),
    ({"args": args}, "args= gives a tool's arguments, and this step calls no tool"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS,
                         ids=[" ".join(options) for options, _ in BAD_OPTIONS])
def test_a_bad_step_option_is_refused_naming_the_step_the_option_its_value_and_what_to_use(
        options: dict[str, Any], message: str) -> None:
    step = Step("b", **{"worker": Worker, **options})

    with pytest.raises(PipelineDefinitionError, match=re.escape(f"pipeline 'p', step 'b': {message}")):
        Pipeline("p", [Step("a", Worker), step])


def test_the_types_a_run_decodes_with_are_accepted_when_msgspec_can_decode_them() -> None:
    pipeline = Pipeline("p", [Step("a", Worker, output=list[StepFailure]),
                              Step("b", Worker, output=None, optional=True)],
                        input_type=dict[str, int])

    assert pipeline.input_type == dict[str, int]
    assert pipeline.steps["a"].output == list[StepFailure]


@pytest.mark.parametrize(("steps", "input_type", "message"), [
    (None, Any, "pipeline 'p': steps must be a list of roost.Step, got None"),
    (Step("a", Worker), Any, "pipeline 'p': steps must be a list of roost.Step, got Step("),
    ([Step("a", Worker)], 5, "pipeline 'p': input_type must be a type msgspec can decode (say "
                             "int, list[str] or a msgspec.Struct), got 5: Type '5' is not supported"),
    ([Step(["a"], Worker)], Any,  # type: ignore[arg-type]
     "pipeline 'p', step ['a']: the name must be a non-empty string without '/'"),
])
def test_bad_pipeline_arguments_are_refused_naming_the_pipeline_and_the_argument(
        steps: Any, input_type: Any, message: str) -> None:
    with pytest.raises(PipelineDefinitionError, match=re.escape(message)):
        Pipeline("p", steps, input_type=input_type)


def test_an_on_reject_that_is_not_a_step_name_is_refused() -> None:
    with pytest.raises(PipelineDefinitionError, match=re.escape(
            "pipeline 'p', step 'a': on_reject=['b'] must name another step of the pipeline")):
        Pipeline("p", [Step("a", Worker, gate=Gate(on_reject=["b"])),  # type: ignore[arg-type]
                       Step("b", Worker)])


@pytest.mark.parametrize("name", ["", "a/b"])
def test_a_step_name_must_be_non_empty_and_without_a_slash(name: str) -> None:
    with pytest.raises(PipelineDefinitionError, match=r"the name must be a non-empty string"):
        Pipeline("p", [Step(name, Worker)])


@pytest.mark.parametrize("name", ["", "a/b", None])
def test_a_pipeline_name_must_be_non_empty_and_without_a_slash(name: Any) -> None:
    with pytest.raises(PipelineDefinitionError, match=r"pipeline name must be a non-empty string"):
        Pipeline(name, [Step("a", Worker)])


def test_a_pipeline_needs_steps() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"pipeline 'p' has no steps"):
        Pipeline("p", [])


def test_something_other_than_a_step_is_refused() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"pipeline 'p': .* is not a roost.Step"):
        Pipeline("p", [Step("a", Worker), ("b", Worker)])  # type: ignore[list-item]


def test_a_failed_optional_step_is_recorded_as_a_step_failure_with_its_error() -> None:
    failure = StepFailure("ValueError: boom")

    assert failure.error == "ValueError: boom"
    assert failure == StepFailure("ValueError: boom")


def test_the_pipeline_api_the_module_docstring_shows_is_exported_from_roost() -> None:
    # pipeline.py's docstring builds pipelines with roost.Pipeline and roost.Step.
    assert getattr(roost, "Pipeline", None) is Pipeline
    assert getattr(roost, "Step", None) is Step
