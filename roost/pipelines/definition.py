"""Pipeline definitions: a named graph of steps, checked when it is built.

    support = roost.Pipeline("support-email", [
        roost.Step("classify", Classifier, output=Classification),
        roost.Step("extract", Extractor, after="classify"),
        roost.Step("draft", Drafter, after=["extract", "classify"], retry=roost.Retry(attempts=3)),
        roost.Step("send", tool="send_email", after="draft",
                   when=lambda r: r["draft"].confidence >= 0.8,
                   args=lambda r, email: {"to": email.sender, "body": r["draft"].text}),
    ])

A worker actor gets a `RunStep` message and returns the step's result. Steps
with no dependency between them run in parallel. All durations are seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from roost._validate import is_count, is_number
from roost.actors.actor import Actor, Message
from roost.errors import PipelineDefinitionError
from roost.pipelines.gate import Gate, GateDecision
from roost.tools.retry import Retry
from roost.tools.spec import type_name


class RunStep(Message, frozen=True):
    """What a step's worker receives; its reply is the step's result.

    Attributes:
        run_id: the run.
        step: the step's name.
        input: the run's input.
        results: the results of the steps completed so far, by step name (a
            failed optional step's entry is a `StepFailure`).
        item: for a map step, the list item this worker handles.
        index: for a map step, the item's position.
        attempt: 1 for the first try, 2 for the first retry, ...
        decisions: the decisions people made at the run's gates so far, by gate name.
    """

    run_id: str
    step: str
    input: Any
    results: dict[str, Any]
    item: Any = None
    index: int | None = None
    attempt: int = 1
    decisions: dict[str, GateDecision] = {}


class StepFailure(msgspec.Struct, frozen=True, tag="step_failure"):
    """The result entry of an optional step that failed: the run went on without it."""

    error: str


class NeedsReview(msgspec.Struct, frozen=True, tag="needs_review"):
    """A step result that asks a person: it opens the gate `<step>/review` and parks the run.

    `data` is the step's proposed result, shown to the person: approving makes it the
    step's result, an edit replaces it, and a rejection ends the run `rejected` (or
    runs the review gate's `on_reject` step). Steps after it do not run before the
    decision, not even after a crash: the review and the run's `waiting` status are
    stored in one write.
    """

    reason: str
    data: Any = None


Condition = Callable[[Mapping[str, Any]], bool]
ToolArgs = Callable[[Mapping[str, Any], Any], Mapping[str, Any]]


class Step(msgspec.Struct, frozen=True):
    """One step of a pipeline.

    Args:
        name: unique within the pipeline.
        worker: the `Actor` subclass that does the step (a pool of `workers` of
            them serves every run of the pipeline).
        tool: instead of a worker, the name of a registered tool to call; its
            keyword arguments come from `args(results, input)`.
        after: the step (a name) or steps (a list) that must complete first.
        when: a condition on the results so far; when false the step is skipped,
            and so are steps that need only skipped steps.
        map: a function of the results returning a list: the step runs once per
            item (in parallel) and its result is the list of their results.
        retry: the step's retry policy (default: one attempt).
        timeout: seconds one attempt may take (default 60).
        fallback: a worker class or tool name run, with the same request, when
            the step fails after its retries.
        optional: on failure the run goes on; the step's result is a `StepFailure`.
        output: the result's type, to decode it exactly when a run resumes.
        workers: pool size for an actor step.
        capacity: the mailbox size of each of those workers; a full one makes the
            step's dispatch wait for room (backpressure), never fail.
        pool: the named pool an actor step runs in (say "gpu"). On a cluster's node
            that does not declare it (`ActorSystem(pools=...)`), each request becomes a
            task in the database, which a node declaring the pool runs and answers
            (see `roost.cluster.tasks`); a node declaring it, or a system on LMDB,
            runs the step itself.
        gate: a `Gate` that opens before the step runs (named after the step): the
            run parks until a person decides. A tool step without one takes its
            tool's (`@tool(gate=...)`).
        review: how the gate a `NeedsReview` result opens (`<step>/review`) behaves:
            assignees, input type (default `output`), timeout, on_reject.
    """

    name: str
    worker: Any = None
    tool: str | None = None
    after: Sequence[str] = ()
    when: Condition | None = None
    map: Callable[[Mapping[str, Any]], Iterable[Any]] | None = None
    args: ToolArgs | None = None
    retry: Retry | None = None
    timeout: float = 60.0
    fallback: Any = None
    optional: bool = False
    output: Any = Any
    workers: int = 4
    capacity: int = 1000
    pool: str | None = None
    gate: Gate | None = None
    review: Gate | None = None

    def __post_init__(self) -> None:
        # Anything else is left as given, for `Pipeline` to refuse naming the pipeline.
        after: Any = self.after
        if isinstance(after, str):
            msgspec.structs.force_setattr(self, "after", (after,))
        elif isinstance(after, Iterable):
            msgspec.structs.force_setattr(self, "after", tuple(after))


class Pipeline:
    """A named, validated graph of steps.

    Args:
        name: the pipeline's name (runs record it, `resume` finds it by it).
        steps: the steps, in any order that respects nothing in particular.
        input_type: the input's type, to decode it exactly when a run resumes.

    Raises:
        PipelineDefinitionError: a duplicate or unknown step name, a cycle, a
            step with no worker or tool (or both), or a bad option; the message
            names the step, the option, its value and what it must be.
    """

    def __init__(self, name: str, steps: Iterable[Step], *, input_type: Any = Any) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise PipelineDefinitionError(
                f"pipeline name must be a non-empty string without '/', got {name!r}")
        where = f"pipeline {name!r}"
        if isinstance(steps, str) or not isinstance(steps, Iterable):
            raise _invalid(where, "steps", steps, "a list of roost.Step")
        _check_decodable(where, "input_type", input_type)
        self.name = name
        self.input_type = input_type
        self.steps: dict[str, Step] = {}
        for item in steps:
            if not isinstance(item, Step):
                raise PipelineDefinitionError(f"{where}: {item!r} is not a roost.Step")
            if not _is_name(item.name) or "/" in item.name:
                raise PipelineDefinitionError(f"{where}, step {item.name!r}: the name must be a "
                                              "non-empty string without '/'")
            if item.name in self.steps:
                raise PipelineDefinitionError(f"{where}: two steps are named {item.name!r}")
            self.steps[item.name] = item
        if not self.steps:
            raise PipelineDefinitionError(f"{where} has no steps")
        #: Steps that run only when a gate rejects: target -> (the gated step, the gate).
        self.reject_targets: dict[str, tuple[str, str]] = {}
        for item in self.steps.values():
            self._check(item)
        self.order = self._topological_order()

    def _check(self, item: Step) -> None:
        where = f"pipeline {self.name!r}, step {item.name!r}"
        if (item.worker is None) == (item.tool is None):
            raise PipelineDefinitionError(
                f"{where}: give exactly one of worker= (an Actor subclass) or tool= (a tool name)")
        if item.worker is not None and not _is_actor_class(item.worker):
            raise _invalid(where, "worker", item.worker, "an Actor subclass")
        if item.tool is not None and not _is_name(item.tool):
            raise _invalid(where, "tool", item.tool, "the name of a registered tool")
        if item.fallback is not None and not _is_name(item.fallback) and not _is_actor_class(
                item.fallback):
            raise _invalid(where, "fallback", item.fallback, "an Actor subclass or a tool name")
        for field, what in _FUNCTIONS:
            _check_function(where, field, getattr(item, field), what)
        if item.tool is not None and item.args is None:
            raise PipelineDefinitionError(
                f"{where}: a tool step needs args=lambda results, input: {{...}}")
        if isinstance(item.fallback, str) and item.args is None:
            raise PipelineDefinitionError(
                f"{where}: its fallback is the tool {item.fallback!r}, so it needs "
                "args=lambda results, input: {...} to call it with")
        if item.args is not None and item.tool is None and not isinstance(item.fallback, str):
            raise PipelineDefinitionError(
                f"{where}: args= gives a tool's arguments, and this step calls no tool (its "
                "worker gets the run's results and input in its RunStep); drop args=, or use "
                "tool=")
        if not (isinstance(item.after, tuple) and all(_is_name(dep) for dep in item.after)):
            raise _invalid(where, "after", item.after, "a step's name or a list of step names")
        for dep in item.after:
            if dep not in self.steps:
                raise PipelineDefinitionError(
                    f"{where}: comes after unknown step {dep!r}; known: {', '.join(self.steps)}")
        if item.retry is not None and not isinstance(item.retry, Retry):
            raise _invalid(where, "retry", item.retry, "a roost.Retry (say "
                           "roost.Retry(attempts=3)) or None for one attempt")
        if not (is_number(item.timeout) and item.timeout > 0):
            raise _invalid(where, "timeout", item.timeout, "> 0 seconds (a finite number)")
        if not isinstance(item.optional, bool):
            raise _invalid(where, "optional", item.optional, "True or False")
        _check_decodable(where, "output", item.output)
        for field in ("workers", "capacity"):
            if not is_count(getattr(item, field), 1):
                raise _invalid(where, field, getattr(item, field), "a whole number >= 1")
        if item.pool is not None:
            if not _is_name(item.pool):
                raise _invalid(where, "pool", item.pool, "a non-empty string (a pool's name)")
            if item.worker is None or isinstance(item.fallback, str):
                raise PipelineDefinitionError(
                    f"{where}: pool= places an actor step's workers; a tool step (or a tool "
                    "fallback) runs on the node driving the run, so drop pool= or make the "
                    "step an actor that calls the tool")
        for option, gate, gate_name in (("gate", item.gate, item.name),
                                        ("review", item.review, f"{item.name}/review")):
            if gate is None:
                continue
            if not isinstance(gate, Gate):
                raise _invalid(where, option, gate, "a roost.Gate or None")
            gate.check(f"{where}, {option}")
            self._check_on_reject(where, item.name, gate_name, gate.on_reject)
        review = item.review
        if (review is not None and review.input_type is not None and item.output is not None
                and review.input_type != item.output):
            raise PipelineDefinitionError(
                f"{where}: review=Gate(input_type={type_name(review.input_type)}) differs from "
                f"output={type_name(item.output)}: an edit at the review becomes the step's "
                "result, so it must be of the output type; leave input_type out (it is the "
                "output type then) or make them the same")

    def _check_on_reject(self, where: str, step: str, gate: str, target: str | None) -> None:
        if target is None:
            return
        if not isinstance(target, str) or target not in self.steps or target == step:
            raise PipelineDefinitionError(
                f"{where}: on_reject={target!r} must name another step of the pipeline")
        if target in self.reject_targets and self.reject_targets[target][1] != gate:
            raise PipelineDefinitionError(
                f"{where}: step {target!r} is already the on_reject step of gate "
                f"{self.reject_targets[target][1]!r}; a step can answer one gate's rejection")
        self.reject_targets[target] = (step, gate)

    def needs(self, name: str) -> tuple[str, ...]:
        """The steps `name` waits for: its `after`, and the step whose gate's rejection it
        answers (an on_reject step)."""
        step = self.steps[name]
        source = self.reject_targets.get(name)
        if source is None or source[0] in step.after:
            return tuple(step.after)
        return (*step.after, source[0])

    def _topological_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join([*path[path.index(name):], name])
                raise PipelineDefinitionError(
                    f"pipeline {self.name!r}: step {name!r} is in a cycle: {cycle}")
            state[name] = 1
            for dep in self.needs(name):
                visit(dep, [*path, name])
            state[name] = 2
            order.append(name)

        for name in self.steps:
            visit(name, [])
        return order

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={self.order})"


#: The options of a step that take a function, and what it must be.
_FUNCTIONS = (
    ("when", "a function of the results returning a bool, or None"),
    ("map", "a function of the results returning the list of items, or None"),
    ("args", "a function of the results and the input returning the tool's keyword arguments"),
)


def _invalid(where: str, field: str, value: object, what: str,
             because: object = None) -> PipelineDefinitionError:
    """The error for option `field` at `where`: what it must be and the value it got, with
    `because` (the reason a check such as msgspec's gave) when there is one."""
    text = f"{where}: {field} must be {what}, got {value!r}"
    return PipelineDefinitionError(text if because is None else f"{text}: {because}")


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _is_actor_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, Actor)


def _check_function(where: str, field: str, value: object, what: str) -> None:
    if value is not None and not callable(value):
        raise _invalid(where, field, value, what)


def _check_decodable(where: str, field: str, kind: object) -> None:
    """Refuse a type msgspec cannot decode: runs decode their inputs and results with one."""
    try:
        msgspec.msgpack.Decoder(kind)
    except (TypeError, ValueError, NameError) as error:
        raise _invalid(where, field, kind, "a type msgspec can decode (say int, list[str] or "
                       "a msgspec.Struct)", because=error) from error
