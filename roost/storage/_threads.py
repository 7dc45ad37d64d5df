"""The worker threads the stores block in (opening a folder, scans, reads), so the event loop does not.

They are a pool of the stores' own, not anyio's: anyio stops its worker threads only when
the event loop's main task finishes, and a loop stopped by a `KeyboardInterrupt` or
`SystemExit` raised inside a task never gets there, so the interpreter would wait for
those threads at exit for ever. An idle thread of this pool ends when the interpreter
exits (`concurrent.futures` wakes and joins it then), whatever became of the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")

#: At most this many store calls block in threads at once; more wait for a free thread.
MAX_THREADS = 32

_executor: ThreadPoolExecutor | None = None


async def in_thread(function: Callable[..., T], *args: object) -> T:
    """`function(*args)`, run in a worker thread with this task's context variables.

    If the awaiting task is cancelled, `function` may still run to its end (or, if it
    had not started, not run at all); wrap the call in `to_completion` when its outcome
    must be known.
    """
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="roost-store")
    call = partial(contextvars.copy_context().run, function, *args)
    return await asyncio.get_running_loop().run_in_executor(_executor, call)


def _forget_executor() -> None:
    """In a forked child the parent's threads are gone: start a pool of its own on demand."""
    global _executor
    _executor = None


os.register_at_fork(after_in_child=_forget_executor)
