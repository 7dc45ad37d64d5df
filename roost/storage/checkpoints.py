"""Checkpoints: the saved states of actors, one ordered series per run.

A checkpoint is stored in the `checkpoints` database under `run id + 0x00 + 8-byte
big-endian sequence number`, so a run's checkpoints sort in order: its latest is one
cursor seek and all of them one forward scan. The writer thread assigns sequence
numbers inside its transaction, so concurrent saves of one run get distinct,
increasing numbers.
"""

from __future__ import annotations

import builtins
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import cache, partial
from typing import Any, TypeVar

import msgspec

from roost.errors import CheckpointCorrupt, ConfigurationError, StoreError
from roost.storage._interface import StoreInterface
from roost.storage._keys import SEQ_SIZE, pack_seq, unpack_seq
from roost.storage.codecs import Record, RecordCodec
from roost.storage.ops import Append, Delete, Op
from roost.storage.store import Snapshot

S = TypeVar("S", bound=msgspec.Struct)

_DB = "checkpoints"
_SEPARATOR = b"\x00"
# Deletes per commit while pruning: small enough to keep each transaction short.
_PRUNE_BATCH = 1000
_DELETE_BATCH = 256


class Checkpoint(Record, tag="checkpoint", frozen=True, kw_only=True, gc=False):
    """One saved state of an actor in a run.

    Attributes:
        run_id: the run it belongs to.
        step: the pipeline step (or other marker) it was taken at.
        actor_path: the path of the actor whose state it is.
        seq: its sequence number in the run, from 1.
        timestamp: when it was saved, in seconds since the epoch.
        state: the state's bytes (see `encode_state` and `decode_state`).
    """

    run_id: str
    step: str
    actor_path: str
    seq: int
    timestamp: float
    state: bytes


class Pruned(msgspec.Struct, frozen=True, gc=False):
    """What `CheckpointStore.prune` removed: checkpoints, and runs left with none."""

    checkpoints: int
    runs: int


def checkpoint_key(run_id: str, seq: int) -> bytes:
    """The key of checkpoint `seq` of run `run_id` in the `checkpoints` database."""
    return _run_prefix(run_id) + pack_seq(seq)


def encode_state(state: msgspec.Struct) -> bytes:
    """The state bytes of a `msgspec.Struct` state, for `CheckpointStore.save`."""
    return _STATE_ENCODER.encode(state)


def decode_state(checkpoint: Checkpoint, state_type: type[S]) -> S:
    """The state of `checkpoint` as a `state_type`.

    Raises:
        CheckpointCorrupt: the state bytes do not decode as a `state_type` (corrupt,
            or saved from a type that has changed since).
    """
    try:
        return _state_decoder(state_type).decode(checkpoint.state)
    except msgspec.DecodeError as exc:
        raise CheckpointCorrupt(
            checkpoint.run_id, checkpoint.step, checkpoint_key(checkpoint.run_id, checkpoint.seq),
            f"its state does not decode as {state_type.__qualname__}: {exc}") from exc


class CheckpointStore:
    """Saves, loads and prunes checkpoints in a `Store`.

    Args:
        store: the open store.
        keep_last: how many checkpoints of each run (or actor) are kept; each save
            deletes the one that falls out (0 keeps every checkpoint).
        clock: wall-clock time in seconds since the epoch (injectable for tests).
    """

    def __init__(self, store: StoreInterface, *, keep_last: int = 3,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 0:
            raise ConfigurationError(f"keep_last={keep_last!r} must be an int >= 0 (0 keeps "
                                     "every checkpoint)")
        self._store = store
        self._keep_last = keep_last
        self._clock = clock

    async def save(self, run_id: str, *, step: str, actor_path: str, state: bytes,
                   durable: bool | None = None, also: Sequence[Op] = ()) -> Checkpoint:
        """Save the next checkpoint of run `run_id` and wait until it is stored.

        Args:
            run_id: the run (not empty, no NUL character).
            step: the step it is taken at.
            actor_path: the actor whose state it is.
            state: the state's bytes (`encode_state` makes them from a struct).
            durable: wait for the flush to disk; None uses the store's durability mode.
            also: other operations to commit in the same transaction, after the
                checkpoint, all or nothing: e.g. the run record's change
                (`RunStore.change`), so a crash cannot keep one without the other.

        Returns:
            The stored checkpoint, with its sequence number.

        Raises:
            ConfigurationError: an invalid run id.
            StoreError: the write failed (nothing was saved).
            RoostError: an operation in `also` refused the write (nothing was saved).

        If cancelled, the checkpoint may still be saved.
        """
        prefix = self._prefix(run_id)
        template = Checkpoint(run_id=run_id, step=step, actor_path=actor_path, seq=0,
                              timestamp=self._clock(), state=state)

        def encoded(seq: int) -> bytes:
            return _CODEC.encode(msgspec.structs.replace(template, seq=seq))

        [seq, *_] = await self._store.commit([Append(_DB, prefix, encoded, self._keep_last), *also],
                                             durable=durable)
        return msgspec.structs.replace(template, seq=seq)

    async def latest(self, run_id: str) -> Checkpoint | None:
        """The latest checkpoint of run `run_id`, or None if it has none (one seek, on the loop).

        Raises:
            ConfigurationError: an invalid run id.
            CheckpointCorrupt: the latest checkpoint does not decode.
        """
        item = await self._store.last(_DB, self._prefix(run_id))
        return None if item is None else _decode(*item)

    async def list(self, run_id: str) -> builtins.list[Checkpoint]:
        """All checkpoints of run `run_id`, oldest first.

        Raises:
            ConfigurationError: an invalid run id.
            CheckpointCorrupt: one of them does not decode.
        """
        return [_decode(key, value)
                async for key, value in self._store.scan(_DB, prefix=self._prefix(run_id))]

    async def prune(self, *, keep_last: int | None = None,
                    older_than: float | None = None) -> Pruned:
        """Delete old checkpoints of every run.

        Args:
            keep_last: keep only the latest `keep_last` checkpoints of each run (>= 1).
            older_than: delete every checkpoint of the runs whose latest checkpoint is
                older than this many seconds.

        Returns:
            How many checkpoints were deleted, and how many runs lost all of theirs.

        Raises:
            ConfigurationError: neither limit given, or a limit out of range.
            CheckpointCorrupt: the latest checkpoint of a run does not decode, so its age
                is unknown (prune stops there; what it deleted before stays deleted).
            StoreError: a delete failed.

        Checkpoints saved while it runs are kept.
        """
        if keep_last is None and older_than is None:
            raise ConfigurationError("prune needs keep_last, older_than or both")
        if keep_last is not None and keep_last < 1:
            raise ConfigurationError(f"keep_last={keep_last!r} must be >= 1")
        if older_than is not None and older_than < 0:
            raise ConfigurationError(f"older_than={older_than!r} must be >= 0 seconds")
        sweep = _Sweep(keep_last, None if older_than is None else self._clock() - older_than)
        async for key, value in self._store.scan(_DB):
            sweep.add(key, value)
            if len(sweep.doomed) >= _PRUNE_BATCH:
                await self._delete(sweep.take())
        sweep.finish_run()
        await self._delete(sweep.take())
        return Pruned(checkpoints=sweep.deleted, runs=sweep.runs)

    async def delete_runs(self, run_ids: Iterable[str]) -> int:
        """Delete every checkpoint of the runs `run_ids` (e.g. finished ones past retention).

        An id that cannot have checkpoints (empty, with a NUL, too long) has none to
        delete. The keys of a few hundred runs are read in one worker-thread hop and
        deleted in batches of a few hundred, so a large sweep never holds one long write
        transaction. Returns how many checkpoints were deleted.
        """
        prefixes = [prefix for prefix in map(self._prefix_or_none, run_ids) if prefix is not None]
        deleted = 0
        for start in range(0, len(prefixes), _DELETE_BATCH):
            keys = await self._store.read(partial(_keys_under, prefixes[start:start + _DELETE_BATCH]))
            for at in range(0, len(keys), _DELETE_BATCH):
                await self._delete(keys[at:at + _DELETE_BATCH])
            deleted += len(keys)
        return deleted

    async def _delete(self, keys: builtins.list[bytes]) -> None:
        if keys:
            await self._store.commit([Delete(_DB, key) for key in keys])

    def _prefix_or_none(self, run_id: str) -> bytes | None:
        try:
            return self._prefix(run_id)
        except ConfigurationError:  # an id no checkpoint can be saved under
            return None

    @property
    def max_run_id_bytes(self) -> int:
        """The longest run id (in UTF-8 bytes) that checkpoints can be saved under: its
        checkpoints' keys (id, separator, sequence number) must fit the store's keys."""
        return self._store.max_key_size - len(_SEPARATOR) - SEQ_SIZE

    def _prefix(self, run_id: str) -> bytes:
        prefix = _run_prefix(run_id)
        if len(prefix) - len(_SEPARATOR) > self.max_run_id_bytes:
            raise ConfigurationError(
                f"run id {run_id!r} is {len(prefix) - 1} bytes long; checkpointed run "
                f"ids must be at most {self.max_run_id_bytes} bytes")
        return prefix


class _Sweep:
    """Decides, key by key in key order, which checkpoints `prune` deletes."""

    def __init__(self, keep_last: int | None, cutoff: float | None) -> None:
        self._cutoff = cutoff
        self._prefix: bytes | None = None
        self._kept: deque[bytes] = deque()
        self._keep_last = keep_last
        self._last: tuple[bytes, bytes] | None = None
        self.doomed: builtins.list[bytes] = []
        self.deleted = 0
        self.runs = 0

    def add(self, key: bytes, value: bytes) -> None:
        """Take the next checkpoint (keys arrive in order, so a run's keys are contiguous)."""
        prefix = key[:-SEQ_SIZE]
        if prefix != self._prefix:
            self.finish_run()
            self._prefix = prefix
        self._kept.append(key)
        self._last = key, value
        if self._keep_last is not None and len(self._kept) > self._keep_last:
            self.doomed.append(self._kept.popleft())

    def finish_run(self) -> None:
        """The current run has no more keys: drop all it kept if its latest is too old."""
        if self._last is not None and self._cutoff is not None:
            if _decode(*self._last).timestamp < self._cutoff:
                self.doomed.extend(self._kept)
                self.runs += 1
        self._kept.clear()
        self._last = None

    def take(self) -> builtins.list[bytes]:
        """The keys to delete so far (counted as deleted), emptying the list."""
        doomed, self.doomed = self.doomed, []
        self.deleted += len(doomed)
        return doomed


def _keys_under(prefixes: builtins.list[bytes], snapshot: Snapshot) -> builtins.list[bytes]:
    """The keys of every checkpoint under `prefixes` (in a worker thread, one read)."""
    return [key for prefix in prefixes for key, _ in snapshot.scan(_DB, prefix=prefix)]


def _run_prefix(run_id: str) -> bytes:
    if not isinstance(run_id, str) or not run_id or "\x00" in run_id:
        raise ConfigurationError(f"run id {run_id!r} must be a non-empty string without NUL "
                                 "characters")
    return run_id.encode() + _SEPARATOR


def _run_of(key: bytes) -> str:
    return key[:-SEQ_SIZE - 1].decode(errors="replace")


def _corrupt(key: bytes, error: str, fields: dict[str, Any] | None) -> StoreError:
    step = None if fields is None else fields.get("step")
    return CheckpointCorrupt(_run_of(key), step if isinstance(step, str) else None, key, error)


def _decode(key: bytes, value: bytes) -> Checkpoint:
    """The checkpoint stored under `key`, checked against its key."""
    checkpoint = _CODEC.decode(key, value)
    if checkpoint.run_id != _run_of(key) or checkpoint.seq != unpack_seq(key[-SEQ_SIZE:]):
        raise CheckpointCorrupt(_run_of(key), checkpoint.step, key,
                                f"it says run {checkpoint.run_id!r} seq {checkpoint.seq}, "
                                "which is not the key it is stored under")
    return checkpoint


@cache
def _state_decoder(state_type: type[S]) -> msgspec.msgpack.Decoder[S]:
    return msgspec.msgpack.Decoder(state_type)


_CODEC = RecordCodec(Checkpoint, _corrupt)
_STATE_ENCODER = msgspec.msgpack.Encoder()
