"""A disk that fills up while runs are in flight: the runs pause with a clear error, nothing
hangs, the store stays openable, and once space is freed the runs resume and complete."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import roost
from tests.support import fill

pytestmark = pytest.mark.anyio

GATE: list[asyncio.Event] = []


class Big(roost.Actor):
    """A step with an ~8 KB result that waits for the gate (so the disk fills meanwhile)."""

    async def receive(self, message: roost.RunStep) -> Any:
        await GATE[0].wait()
        return {"run": message.run_id, "text": "x" * 8192}


PIPELINE = roost.Pipeline("big", [roost.Step("a", Big, workers=8),
                                  roost.Step("b", Big, after="a", workers=8)])


async def test_runs_pause_on_a_full_disk_and_resume_once_space_is_freed(small_disk: Path) -> None:
    store = small_disk / "store"
    filler = small_disk / "filler"
    GATE[:] = [asyncio.Event()]
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical") as system:
        handles = [await system.pipelines.start(PIPELINE, run_id=f"run-{i}") for i in range(30)]
        await anyio.to_thread.run_sync(fill, filler)
        GATE[0].set()
        with anyio.fail_after(20):  # nothing hangs
            outcomes = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)

    paused = [o for o in outcomes if isinstance(o, roost.RunInterrupted)]
    assert paused, outcomes
    assert all(isinstance(o, roost.RunInterrupted | roost.RunOutcome) for o in outcomes), outcomes
    assert "could not save its progress" in str(paused[0])
    assert "check the disk (space, permissions)" in str(paused[0])

    await anyio.to_thread.run_sync(filler.unlink)
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical") as system:
        resumed = await system.pipelines.register(PIPELINE, resume=True)
        with anyio.fail_after(20):
            finished = [await handle.result() for handle in resumed]
        statuses = {r.run_id: str(r.status) for r in await system.pipelines.list()}

    assert len(resumed) == len(paused)
    assert {o.status for o in finished} == {"completed"}
    assert set(statuses.values()) == {"completed"} and len(statuses) == 30


async def test_a_checkpoint_the_full_disk_refused_is_undone_so_a_retried_ask_counts_once(
        small_disk: Path) -> None:
    filler = small_disk / "filler"
    async with roost.ActorSystem(store=small_disk / "store", log_format="json",
                                 log_level="critical") as system:
        notes = system.spawn(Notes, name="notes")
        assert await notes.ask(Note("a" * 65536), timeout=5) == 1
        await anyio.to_thread.run_sync(fill, filler)

        with pytest.raises(roost.CheckpointNotSaved,
                           match=r"^/notes: its checkpoint was not saved \(StoreError: .*\); "
                                 r"the actor restarts from its last checkpoint"):
            await notes.ask(Note("b" * 65536), timeout=5)
        await anyio.to_thread.run_sync(filler.unlink)

        # Restarted from the last saved state: the refused note is not counted.
        assert await notes.ask(Note("b" * 65536), timeout=5) == 2
        assert notes.statistics()["restarts"] == 1


class Jotted(msgspec.Struct):
    notes: list[str] = msgspec.field(default_factory=list)


class Note(roost.Message):
    text: str


class Notes(roost.Actor):
    """Keeps every note in its checkpointed state (each ~64 KB: a save needs new pages)."""

    state_type = Jotted

    def __init__(self) -> None:
        self.state = Jotted()

    async def receive(self, message: Note) -> int:
        self.state.notes.append(message.text)
        await self.checkpoint(step="noted")
        return len(self.state.notes)
