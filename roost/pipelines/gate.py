"""Gates: where a run waits for a person's decision, declared on a step or a tool.

    Step("send", tool="send_email", after="draft",
         args=lambda r, email: {"to": email.sender, "body": r["draft"].text},
         gate=Gate(when=lambda r: r["draft"].confidence < 0.8, reason="low confidence",
                   assignees=["support"], input_type=ReplyEdit, timeout=4 * 3600,
                   on_timeout=Escalate(to=["leads"], timeout=3600, on_timeout="reject")))

A step's gate opens before the step runs, when `when` holds (always without it),
and is named after the step. A step that returns `NeedsReview(reason, data)` opens
the gate `<step>/review` after it (configured by the step's `review=`): approving
makes `data` the step's result. A tool step that ends in `ToolOutcomeUnknown` opens
`<step>/outcome`, asking whether the effect happened. All durations are seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from roost.errors import PipelineDefinitionError

#: What a person may decide at a step's gate or a review gate.
APPROVAL_DECISIONS = ("approve", "reject", "edit")
#: What a person may decide at an outcome gate (did the tool's effect happen?).
OUTCOME_DECISIONS = ("done", "not_done", "abandon")

TimeoutAction = Literal["approve", "reject"]
#: The longest a gate or an escalation may wait before its timeout applies (a century): a
#: deadline is stored to the millisecond in 8 bytes, so an infinite one cannot be.
MAX_TIMEOUT = 100 * 365 * 86_400.0


class Escalate(msgspec.Struct, frozen=True):
    """On timeout, hand the gate to other people with a new deadline.

    Args:
        to: the assignees who get the gate (they replace the previous ones).
        timeout: seconds they have; then `on_timeout` applies (it may escalate again).
        on_timeout: "approve", "reject" or a further `Escalate`.
    """

    to: Sequence[str]
    timeout: float
    on_timeout: TimeoutAction | Escalate = "reject"

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "to", _names("Escalate", "to", self.to))
        if not self.to or not all(isinstance(name, str) and name for name in self.to):
            raise PipelineDefinitionError(
                f"Escalate(to=...) needs at least one name, got {list(self.to)!r}")
        if not _timeout_fits(self.timeout):
            raise PipelineDefinitionError(
                f"Escalate timeout= must be > 0 seconds and at most a century, got "
                f"{self.timeout!r}")
        _check_on_timeout("Escalate", self.on_timeout)


class Gate(msgspec.Struct, frozen=True):
    """A point where a run waits for a person.

    Args:
        when: a condition on the results so far; the gate opens only when it holds
            (always, without it). Ignored by a review gate, which a step opens.
        reason: why the gate is there, shown to the person: text, or a function of
            the results returning text.
        assignees: who should decide (people or groups; free-form names).
        input_type: the type an "edit" decision's input must fit (msgspec); an edit's
            input replaces the step's arguments (a tool step), the request's `input`
            (a worker step) or the step's result (a review gate).
        timeout: seconds until `on_timeout` applies (None: the gate waits for ever).
        on_timeout: "reject", "approve", or an `Escalate` chain.
        on_reject: a step that runs only when this gate rejects (in place of the gated
            step and what needs it); without it a rejection ends the run `rejected`.
        show: what the person sees, as a function of the results and the input
            (default: a tool step's arguments, else the results the step comes after).
    """

    when: Callable[[Mapping[str, Any]], bool] | None = None
    reason: str | Callable[[Mapping[str, Any]], str] = "waiting for a person's approval"
    assignees: Sequence[str] = ()
    input_type: Any = None
    timeout: float | None = None
    on_timeout: TimeoutAction | Escalate = "reject"
    on_reject: str | None = None
    show: Callable[[Mapping[str, Any], Any], Any] | None = None

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "assignees",
                                      _names("Gate", "assignees", self.assignees))
        # Checked here, not only in `check`: a tool's gate (`@tool(gate=...)`) is never part
        # of a pipeline's definition, and a bad deadline would fail only once the gate opens.
        if self.timeout is not None and not _timeout_fits(self.timeout):
            raise PipelineDefinitionError(
                "Gate: gate timeout= must be > 0 seconds and at most a century, or None to "
                f"wait for ever, got {self.timeout!r}")
        _check_on_timeout("Gate", self.on_timeout)

    def check(self, where: str) -> None:
        """Raise PipelineDefinitionError, naming `where`, for a malformed option."""
        if self.when is not None and not callable(self.when):
            raise PipelineDefinitionError(f"{where}: gate when= must be a function of the results")
        if not (isinstance(self.reason, str) or callable(self.reason)):
            raise PipelineDefinitionError(f"{where}: gate reason= must be text or a function")
        if self.show is not None and not callable(self.show):
            raise PipelineDefinitionError(
                f"{where}: gate show= must be a function of the results and the input, "
                f"got {self.show!r}")
        if not all(isinstance(name, str) and name for name in self.assignees):
            raise PipelineDefinitionError(f"{where}: gate assignees= must be non-empty names")
        if self.input_type is not None:
            try:
                msgspec.json.schema(self.input_type)
            except (TypeError, ValueError) as error:
                raise PipelineDefinitionError(
                    f"{where}: gate input_type={self.input_type!r} is not a type msgspec can "
                    f"validate: {error}") from error


def _names(owner: str, field: str, value: object) -> tuple[Any, ...]:
    """`value` as a tuple; a lone string (which would become its letters) or something that
    is not a list is refused when the gate is built."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise PipelineDefinitionError(
            f"{owner}: {field} must be a list of names (say ['support']), got {value!r}")
    return tuple(value)


def _timeout_fits(value: object) -> bool:
    """Whether `value` is a number of seconds a stored deadline can hold (inf cannot)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and 0 < value <= MAX_TIMEOUT)


def _check_on_timeout(owner: str, action: object) -> None:
    """Refuse an `on_timeout` that is neither an action nor an `Escalate` (which checked
    itself when built)."""
    if not isinstance(action, Escalate) and action not in ("approve", "reject"):
        raise PipelineDefinitionError(
            f"{owner}: on_timeout= must be 'approve', 'reject' or roost.Escalate(...), "
            f"got {action!r}")


class GateDecision(msgspec.Struct, frozen=True):
    """A person's decision at a gate, as the steps after it see it (`RunStep.decisions`).

    Attributes:
        decision: "approve", "reject" or "edit" ("done", "not_done" or "abandon" at an
            outcome gate).
        by: who decided ("roost:timeout" when the gate's deadline decided).
        at: when, in seconds since the epoch.
        input: an edit's input, as the gate's `input_type` (or plain data).
        comment: the person's comment, if any.
    """

    decision: str
    by: str
    at: float
    input: Any = None
    comment: str | None = None
