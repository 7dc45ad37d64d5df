"""Await work that must finish even when its caller is cancelled (opening or closing a store,
shutting a system down).

anyio's shielded cancel scopes hold off anyio's own cancellations only: an asyncio
`task.cancel()`, as `asyncio.timeout` or a `TaskGroup` whose sibling failed delivers, goes
through them. Dropping a store's open or close half way leaves its folder locked by this
very process until it exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def to_completion(work: Awaitable[T]) -> T:
    """Await `work` to its end even if this task is cancelled meanwhile; then raise that
    cancellation (chained to `work`'s error, if it failed), else return `work`'s result."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    # The shield holds off anyio's cancellations, which anyio delivers again at every await
    # of a task in a cancelled scope (this loop would spin); asyncio's come through once.
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as error:
                cancelled = error
    if cancelled is not None:
        if not task.cancelled() and task.exception() is not None:
            raise cancelled from task.exception()
        raise cancelled
    return task.result()
