"""The bounded soak (benches/soak.py): 50 seeded SIGKILLs of a process running pipelines with
side effects; after each one the store opens, acknowledged checkpoints are there, runs are
resumable and no effect happened twice; at the end every effect happened exactly once."""

from __future__ import annotations

import os
import random
from functools import partial
from pathlib import Path

import anyio
import lmdb
import pytest

from benches.soak import Soak, crash_load, soak

SEED = 20261202


@pytest.mark.timeout(300)  # about 40 s; twice that on a loaded machine, over the default 60 s
def test_fifty_kills_lose_no_acknowledged_checkpoint_and_repeat_no_side_effect(
        tmp_path: Path) -> None:
    lines: list[str] = []

    result = soak(tmp_path, kills=50, runs=2500, seed=SEED, log=lines.append)

    assert result.kills == 50
    assert result.acked > 0
    assert lines[-1] == "soak: passed after 50 kills"


def test_a_store_damaged_between_runs_is_refused_and_no_side_effect_repeats(
        tmp_path: Path) -> None:
    state = Soak(tmp_path, runs=400, seed=SEED, log=lambda _: None)
    state.kill_round(random.Random(SEED))
    effects = effects_of(state)  # none yet, if the kill came early
    # Cut a tenth of the pages LMDB's last commit uses: the file may also end in pages
    # a killed transaction wrote and never committed, and cutting only those damages nothing.
    os.truncate(state.store / "data.mdb", committed_bytes(state.store) * 9 // 10)

    code, stderr = state.round(None)

    assert code == 1
    assert "StoreCorrupt" in stderr and "truncated" in stderr and "restore the folder" in stderr
    assert effects_of(state) == effects


def effects_of(state: Soak) -> str:
    return state.effects.read_text() if state.effects.exists() else ""


def committed_bytes(store: Path) -> int:
    with lmdb.open(str(store), readonly=True, lock=False, subdir=True) as env:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def test_runs_queued_behind_busy_slots_all_complete_while_one_percent_of_messages_crash(
        tmp_path: Path) -> None:
    completed, growth = anyio.run(partial(crash_load, tmp_path, runs=2000, max_active=200))

    assert completed == 2000
    assert growth < 64 * 2**20  # bounded (about 18 MiB here): no per-run state outlives its run
