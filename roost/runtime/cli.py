"""The `roost` command: `roost run PATH` starts a system and runs a bootstrap script's root.

`roost store check|backup` (in `store_commands`) look after a store folder offline.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import signal
import sys
from collections.abc import Sequence

from roost.actors.supervisor import SupervisorSpec
from roost.errors import BootstrapError, RoostError
from roost.runtime.bootstrap import Root, load_root
from roost.runtime.log import LOG_FORMATS, LOG_LEVELS
from roost.runtime.store_commands import add_store_commands, run_store_command
from roost.runtime.system import ActorSystem

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roost", description="The roost actor runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a bootstrap script's root tree or main(system)")
    run.add_argument("target", help="a Python file, a folder with app.py, or module:attr")
    run.add_argument("--store", default=".roost", help="the LMDB store folder (default: .roost)")
    run.add_argument("--durability", choices=("sync", "async"), default="sync")
    run.add_argument("--log-format", choices=LOG_FORMATS, default="auto")
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    add_store_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `roost` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "store":
        return run_store_command(args)
    try:
        root = load_root(args.target)
    except BootstrapError as error:
        print(f"roost: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(root, args))
    except KeyboardInterrupt:
        return EXIT_OK


async def _run(root: Root, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum.name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with ActorSystem(
            store=args.store,
            durability=args.durability,
            log_format=args.log_format,
            log_level=args.log_level,
        ) as system:
            body = _run_tree(system, root) if isinstance(root, SupervisorSpec) else _run_main(system, root)
            work = asyncio.ensure_future(body)
            waiter = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                print(f"roost: received {received[0]}, shut down gracefully", file=sys.stderr)
                return EXIT_OK
            work.result()
        return EXIT_OK
    except RoostError as error:
        print(f"roost: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:
        print(f"roost: the root failed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED


async def _run_tree(system: ActorSystem, spec: SupervisorSpec) -> None:
    ref = await system.start(spec)
    await system.join(ref)


async def _run_main(system: ActorSystem, main: Root) -> None:
    result = main(system)  # type: ignore[operator]
    if inspect.isawaitable(result):
        await result


if __name__ == "__main__":
    sys.exit(main())
