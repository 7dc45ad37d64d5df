"""Step results: each completed step's result, stored once under `run id + 0x00 + step`.

A run's checkpoint names the steps it has completed; their results live here, written
in the same commit as the checkpoint of the step that made them. So a 5-step run of
1 KB results stores 5 KB of results, where checkpoints that each carried every result
so far stored 15 KB, and resuming a run reads its results with one prefix scan.
Results stay when a finished run's checkpoints are pruned: they are its outcome.
"""

from __future__ import annotations

import msgspec

from roost.storage._interface import StoreInterface
from roost.storage.ops import Put

_DB = "results"
_SEPARATOR = b"\x00"


def result_key(run_id: str, step: str) -> bytes:
    """The key of `step`'s result in run `run_id`."""
    return run_id.encode() + _SEPARATOR + step.encode()


class StepResults:
    """Writes and reads the step results of runs in a `Store`."""

    def __init__(self, store: StoreInterface) -> None:
        self._store = store

    @staticmethod
    def put_op(run_id: str, step: str, result: bytes) -> Put:
        """The write of `step`'s encoded result, to commit with the step's checkpoint."""
        return Put(_DB, result_key(run_id, step), result)

    async def read(self, run_id: str) -> dict[str, msgspec.Raw]:
        """Every stored step result of `run_id`, by step name (encoded)."""
        prefix = run_id.encode() + _SEPARATOR
        return {key[len(prefix):].decode(): msgspec.Raw(value)
                async for key, value in self._store.scan(_DB, prefix=prefix)}
