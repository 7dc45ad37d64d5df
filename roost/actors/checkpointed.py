"""Checkpointed actors: state that is saved to the store and reloaded on every start.

An actor declares `state_type` (a `msgspec.Struct`) and keeps its state in
`self.state`; `await self.checkpoint(step=...)` saves it. Whenever the actor
starts (first start, a restart under supervision, or a new process opening the
same store) it is hydrated from its latest checkpoint before `on_start` and
before any message, so it resumes from the last checkpoint, not from zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from roost._logging import get_logger
from roost.errors import (
    CheckpointCorrupt,
    CheckpointNotSaved,
    CheckpointUnencodable,
    ConfigurationError,
    StoreError,
)

if TYPE_CHECKING:
    from roost.actors._cell import Cell
    from roost.actors.actor import Actor
    from roost.storage import Checkpoint

_log = get_logger("roost")


def checkpoint_id(actor: Actor) -> str:
    """The id the actor's checkpoints are stored under: `checkpoint_id` if set, else its path."""
    explicit = getattr(actor, "checkpoint_id", None)
    return explicit if isinstance(explicit, str) and explicit else actor.ctx.path


def _checkpoints(checkpoints: Any, actor: Actor) -> Any:
    if checkpoints is None:
        raise ConfigurationError(
            f"{actor.ctx.path}: {type(actor).__name__} is checkpointed (state_type="
            f"{actor.state_type.__name__}) but the system has no store; "  # type: ignore[union-attr]
            "pass ActorSystem(store=...)"
        )
    return checkpoints


async def hydrate(checkpoints: Any, cell: Cell, actor: Actor) -> None:
    """Load the latest checkpoint of `actor` into `actor.state`, if there is one.

    Raises:
        CheckpointCorrupt: the checkpoint does not decode (unless the actor sets
            `fresh_on_corrupt_checkpoint`, in which case it starts from its
            `__init__` state and the corruption is logged).
    """
    from roost.storage import decode_state

    state_type = actor.state_type
    assert state_type is not None  # hydrate is only called for checkpointed actors
    store = _checkpoints(checkpoints, actor)
    key = checkpoint_id(actor)
    try:
        latest = await store.latest(key)
        if latest is None:
            return
        actor.state = decode_state(latest, state_type)
        dropped = _fields_not_in(latest.state, state_type)
        if dropped:
            # A renamed or removed field: its saved value is gone from the actor's state.
            _log.warning("checkpoint_fields_dropped", actor=cell.path,
                         state_type=state_type.__qualname__, fields=dropped,
                         advice="a field of the saved state is not in state_type; if it was "
                                "renamed, keep the old name (msgspec.field(name=...))")
    except CheckpointCorrupt as error:
        if not getattr(actor, "fresh_on_corrupt_checkpoint", False):
            raise
        _log.error("checkpoint_corrupt_started_fresh", actor=cell.path, error=str(error))
        return
    _log.debug("actor_hydrated", actor=cell.path, step=latest.step, seq=latest.seq)


def _fields_not_in(state: bytes, state_type: type) -> list[str]:
    """The fields saved in `state` that `state_type` does not have (msgspec drops them)."""
    fields = getattr(state_type, "__struct_encode_fields__", None)
    saved = msgspec.msgpack.decode(state)
    if fields is None or not isinstance(saved, dict):
        return []
    return sorted(str(name) for name in saved if name not in fields)


async def save(actor: Actor, step: str, durable: bool | None) -> Checkpoint:
    """Save `actor.state` as the actor's next checkpoint and wait until it is stored."""
    from roost.storage import encode_state

    if actor.state_type is None:
        raise ConfigurationError(
            f"{actor.ctx.path}: {type(actor).__name__} has no state_type; set "
            "`state_type = YourState` (a msgspec.Struct) to checkpoint it"
        )
    state = getattr(actor, "state", None)
    if not isinstance(state, actor.state_type):
        raise ConfigurationError(
            f"{actor.ctx.path}: self.state must be a {actor.state_type.__name__} to checkpoint, "
            f"got {type(state).__name__}"
        )
    cell = actor.ctx._cell
    store = _checkpoints(cell.engine.checkpoints, actor)
    current = cell.current
    run_id = None if current is None or current.trace is None else current.trace.run_id
    try:
        encoded = encode_state(state)
    except _UNENCODABLE as exc:
        field, error = unencodable_field(state, "state")
        raise CheckpointUnencodable(cell.path, type(state).__qualname__, field,
                                    error or str(exc)) from exc
    try:
        checkpoint = await store.save(
            checkpoint_id(actor), step=step, actor_path=cell.path, state=encoded,
            durable=durable,
        )
    except StoreError as exc:
        raise CheckpointNotSaved(cell.path, exc) from exc
    _log.debug("checkpoint_saved", actor=cell.path, step=step, seq=checkpoint.seq, run_id=run_id)
    return checkpoint


def unencodable_field(value: Any, path: str) -> tuple[str, str | None]:
    """The path of the innermost part of `value` that msgpack cannot encode, and why.

    Walks structs, mappings and sequences; returns `(path, None)` if no part fails
    on its own (e.g. a cycle), so the caller falls back to the whole state's error.
    """
    try:
        _PROBE.encode(value)
        return path, None
    except _UNENCODABLE as exc:
        reason = f"{type(value).__name__} is not encodable ({exc})"
    if isinstance(value, msgspec.Struct):
        parts: list[tuple[str, Any]] = [
            (f"{path}.{name}", getattr(value, name)) for name in value.__struct_fields__]
    elif isinstance(value, dict):
        parts = [(f"{path}[{key!r}]", item) for key, item in value.items()]
        parts += [(f"{path} key {key!r}", key) for key in value
                  if not isinstance(key, (str, int, float, bool, bytes))]
    elif isinstance(value, (list, tuple, set, frozenset)):
        parts = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    else:
        return path, reason
    for part_path, part in parts:
        try:
            _PROBE.encode(part)
        except _UNENCODABLE:
            return unencodable_field(part, part_path)
    return path, reason


_PROBE = msgspec.msgpack.Encoder()
#: What msgpack raises for a value it cannot encode (OverflowError: an int past 64 bits).
_UNENCODABLE = (TypeError, ValueError, OverflowError, msgspec.EncodeError)
