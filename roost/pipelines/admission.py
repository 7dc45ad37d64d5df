"""Admission: a bound on the runs in flight, and the line of accepted runs waiting for a slot.

Starting a run never fails because the system is busy. A run past the bound is
recorded in the store as `queued` (so it survives a crash) and its id waits here;
when a run ends its slot goes to the oldest waiting run. Only ids are held, so
memory stays flat in the number of queued runs. A caller that must not queue asks
for `wait=False` and gets `SystemBusy` instead.
"""

from __future__ import annotations

from collections import OrderedDict

from roost._validate import check_count


class Admission:
    """Counts the runs in flight against `limit` and keeps the waiting ones in order.

    Args:
        limit: the most runs in flight at once (>= 1).
    """

    def __init__(self, limit: int) -> None:
        check_count("ActorSystem", "max_active_runs", limit, 1)
        self.limit = limit
        # Slots are handed out in groups of this many while runs wait: runs admitted
        # together move through their steps together, so the store commits and the
        # event loop handle them in larger batches (a twentieth of the limit).
        self.batch = max(1, limit // 20)
        self._active: set[str] = set()
        # run id -> pipeline name, oldest first; an OrderedDict so a cancel is O(1).
        self._waiting: OrderedDict[str, str] = OrderedDict()

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def has_room(self) -> bool:
        return len(self._active) < self.limit

    def can_start(self) -> bool:
        """Whether a new run may take a slot now: one is free and no run waits before it
        (a new run joins the back of the line, however slots free up)."""
        return len(self._active) < self.limit and not self._waiting

    def take_slot(self, run_id: str) -> None:
        """Count `run_id` as in flight (the caller checked `has_room`, or resumes it)."""
        self._active.add(run_id)

    def wait(self, run_id: str, pipeline: str) -> None:
        """Put `run_id` at the end of the line."""
        self._waiting[run_id] = pipeline

    def is_waiting(self, run_id: str) -> bool:
        return run_id in self._waiting

    def leave(self, run_id: str) -> bool:
        """Take `run_id` out of the line (a cancel); False if it was not waiting."""
        return self._waiting.pop(run_id, None) is not None

    def release(self, run_id: str) -> None:
        """`run_id` is no longer in flight (a second call does nothing)."""
        self._active.discard(run_id)

    def admit(self) -> list[tuple[str, str]]:
        """Give free slots to the oldest waiting runs: the (run id, pipeline) pairs admitted.

        While runs are in flight, waiting runs are admitted once a group of `batch`
        slots (or as many as wait) is free; with none in flight, at once.
        """
        free = self.limit - len(self._active)
        if self._active and free < min(self.batch, len(self._waiting)):
            return []
        admitted = []
        while self._waiting and len(self._active) < self.limit:
            next_id, pipeline = self._waiting.popitem(last=False)
            self._active.add(next_id)
            admitted.append((next_id, pipeline))
        return admitted

    def statistics(self) -> dict[str, int]:
        return {"active": len(self._active), "queued": len(self._waiting), "limit": self.limit}
