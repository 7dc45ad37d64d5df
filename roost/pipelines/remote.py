"""A step run in a pool on another node of the cluster: its request and answer as sent
through the step-task queue (`roost.cluster.tasks`), and how each side handles them.

The owner (the node driving the run) sends what a `RunStep` carries, with every value
as the run stored it (msgpack): the serving node decodes them with the pipeline's own
types (its input type, each step's output type), so a worker sees the same request
wherever it runs. The answer is the worker's result, encoded, a `NeedsReview`, or the
error it raised, with whether the step's retry policy retries that error.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from roost._logging import get_logger
from roost.errors import RemoteStepFailed
from roost.pipelines.definition import NeedsReview, RunStep, Step
from roost.pipelines.gate import GateDecision
from roost.tools.retry import Retry
from roost.trace import TraceContext

_log = get_logger("roost.pipelines")
_ENCODER = msgspec.msgpack.Encoder()


class StepRequest(msgspec.Struct, frozen=True, tag="step_request"):
    """One attempt of a step, for a worker on another node.

    Attributes:
        step: the step's name; `fallback`: run its fallback worker instead.
        input: the run's input (or, `edited`, a person's edit replacing it), msgpack.
        results: the results so far, each as the run stored it.
        item, index: a map step's item (msgpack) and its index.
        attempt, decisions: as in `RunStep`.
        trace_id, span_id, scope: where the worker's spans go in the run's trace.
    """

    step: str
    fallback: bool
    input: msgspec.Raw
    edited: bool
    results: dict[str, msgspec.Raw]
    item: msgspec.Raw
    index: int | None
    attempt: int
    decisions: dict[str, GateDecision]
    trace_id: str
    span_id: str
    scope: str


class StepAnswer(msgspec.Struct, frozen=True, tag="step_answer"):
    """What the serving node answers: the worker's `value` (msgpack), the reason of the
    `NeedsReview` it returned (`value` is then its data), or the error it raised."""

    value: msgspec.Raw
    review: str | None = None
    error_type: str | None = None
    error: str | None = None
    retryable: bool = False


_NONE = msgspec.Raw(_ENCODER.encode(None))
_REQUESTS = msgspec.msgpack.Decoder(StepRequest)
_ANSWERS = msgspec.msgpack.Decoder(StepAnswer)


def encode_request(*, step: str, fallback: bool, input: Any, edited: bool,
                   results: Mapping[str, msgspec.Raw], item: Any, index: int | None,
                   attempt: int, decisions: Mapping[str, GateDecision],
                   trace: TraceContext) -> bytes:
    """A step request as bytes for the task queue (raises what msgpack raises for a value
    it cannot encode: the run stored every one of them, so only a bug does that)."""
    return _ENCODER.encode(StepRequest(
        step=step, fallback=fallback, input=msgspec.Raw(_ENCODER.encode(input)), edited=edited,
        results=dict(results), item=msgspec.Raw(_ENCODER.encode(item)), index=index,
        attempt=attempt, decisions=dict(decisions), trace_id=trace.trace_id,
        span_id=trace.span_id or "", scope=trace.step or step))


def decode_answer(data: bytes, *, run_id: str, step: Step, pool: str, node: str,
                  output: Any) -> Any:
    """The result in an answer from `node`, as `output`.

    Raises:
        RemoteStepFailed: the worker raised there, or the answer cannot be read.
    """
    try:
        answer = _ANSWERS.decode(data)
        if answer.error_type is not None:
            raise RemoteStepFailed(run_id, step.name, pool, node, answer.error_type,
                                   answer.error or "", retryable=answer.retryable)
        if answer.review is not None:
            return NeedsReview(answer.review, msgspec.msgpack.decode(answer.value))
        return msgspec.msgpack.decode(answer.value, type=output)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise RemoteStepFailed(run_id, step.name, pool, node, type(error).__name__,
                               f"its answer cannot be read as {output!r}: {error}",
                               retryable=False) from None


def item_type(output: Any) -> Any:
    """The type of one item's result of a map step whose `output` is a list type."""
    origin = typing.get_origin(output)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence):
        args = typing.get_args(output)
        return args[0] if args else Any
    return Any


async def serve(pipelines: Any, node: str, run_id: str, pipeline_name: str,
                data: bytes) -> bytes:
    """Run a step request sent to this node, in its local worker pool; the answer, which
    carries any failure (a request this node cannot run, the worker's exception)."""
    request: StepRequest | None = None
    try:
        request = _REQUESTS.decode(data)
        pipeline = pipelines.registered(pipeline_name)
        if pipeline is None:
            return _failure("PipelineNotRegistered", f"pipeline {pipeline_name!r} is not "
                            f"registered on node {node!r}", retryable=True)
        step = pipeline.steps.get(request.step)
        if step is None:
            return _failure("UnknownStep", f"pipeline {pipeline_name!r} has no step "
                            f"{request.step!r} on node {node!r} (its nodes run different "
                            "versions of it?)")
        worker = step.fallback if request.fallback else step.worker
        value_input = msgspec.msgpack.decode(
            request.input, type=_input_type(pipeline, step, edited=request.edited))
        results = {name: _result(pipelines, pipeline, name, raw)
                   for name, raw in request.results.items()}
        message = RunStep(run_id=run_id, step=step.name, input=value_input, results=results,
                          item=msgspec.msgpack.decode(request.item), index=request.index,
                          attempt=request.attempt, decisions=request.decisions)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return _failure("StepRequestCorrupt", f"the request cannot be read on node {node!r}: "
                        f"{error}")
    trace = TraceContext(request.trace_id, request.span_id or None, run_id, request.scope)
    pool = pipelines.worker_pool(pipeline, step, worker)
    try:
        result = await pool.ask(message, timeout=step.timeout + 1.0, trace=trace)
    except Exception as error:
        policy = step.retry if step.retry is not None and not request.fallback else Retry()
        return _failure(type(error).__name__, str(error), retryable=policy.retries(error))
    try:
        if isinstance(result, NeedsReview):
            return _ENCODER.encode(StepAnswer(value=msgspec.Raw(_ENCODER.encode(result.data)),
                                              review=result.reason))
        return _ENCODER.encode(StepAnswer(value=msgspec.Raw(_ENCODER.encode(result))))
    except (TypeError, msgspec.EncodeError) as error:
        return _failure("ResultUnencodable", f"its result ({type(result).__name__}) cannot "
                        f"be sent back: {error}; return a msgspec.Struct or plain data")


def _input_type(pipeline: Any, step: Step, *, edited: bool) -> Any:
    if not edited:
        return pipeline.input_type
    gate = step.gate
    return gate.input_type if gate is not None and gate.input_type is not None else Any


def _result(pipelines: Any, pipeline: Any, name: str, raw: msgspec.Raw) -> Any:
    step = pipeline.steps.get(name)
    return pipelines.decoder(Any if step is None else step.output).decode(raw)


def _failure(error_type: str, message: str, *, retryable: bool = False) -> bytes:
    _log.warning("step_task_failed", error_type=error_type, error=message)
    return _ENCODER.encode(StepAnswer(value=_NONE, error_type=error_type, error=message,
                                      retryable=retryable))
