"""The crash test's victim: saves checkpoints in a loop in sync mode until it is killed.

Usage: `python _checkpoint_writer.py STORE_FOLDER RUN_ID WRITERS`. Prints `ready` once the
store is open, then `ack SEQ STEP` (flushed at once) after each acknowledged save, from
WRITERS concurrent tasks so that saves share group commits.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

from roost.storage import CheckpointStore, Store, encode_state


class Progress(msgspec.Struct, frozen=True):
    writer: int
    count: int
    padding: bytes


async def save_forever(checkpoints: CheckpointStore, run_id: str, writer: int) -> None:
    count = 0
    while True:
        count += 1
        saved = await checkpoints.save(
            run_id, step=f"w{writer}-{count}", actor_path=f"/crash/writer-{writer}",
            state=encode_state(Progress(writer, count, b"x" * 512)))
        print(f"ack {saved.seq} {saved.step}", flush=True)


async def main(folder: str, run_id: str, writers: int) -> None:
    store = await Store.open(folder)  # never closed: the test kills this process
    checkpoints = CheckpointStore(store, keep_last=0)  # the test checks every acknowledged one
    print("ready", flush=True)
    await asyncio.gather(*(save_forever(checkpoints, run_id, w) for w in range(writers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
