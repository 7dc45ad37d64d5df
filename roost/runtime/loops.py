"""The event loops roost can run on: asyncio's own, or uvloop's from the `roost[fast]` extra.

`roost run --loop uvloop` and `python -m benches --loop uvloop` choose one here. When you
embed roost, choose it yourself: `uvloop.run(main())`, or
`asyncio.Runner(loop_factory=loop_factory("uvloop"))`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from roost.errors import ExtraNotInstalled

#: The loop names `loop_factory` accepts.
LOOPS = ("asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The function that creates a new event loop of kind `name` ("asyncio" or "uvloop").

    Raises:
        ExtraNotInstalled: `name` is "uvloop" and `roost[fast]` (uvloop) is not installed.
        ValueError: `name` is not one of `LOOPS`.
    """
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        try:
            import uvloop
        except ImportError as error:
            raise ExtraNotInstalled("the uvloop event loop", "fast", "uvloop") from error
        return uvloop.new_event_loop
    raise ValueError(f"unknown event loop {name!r}; choose one of: {', '.join(LOOPS)}")


def installed_loops() -> tuple[str, ...]:
    """The names in `LOOPS` whose event loop can be created here (uvloop only with `roost[fast]`)."""
    installed = []
    for name in LOOPS:
        try:
            loop_factory(name)
        except ExtraNotInstalled:
            continue
        installed.append(name)
    return tuple(installed)
