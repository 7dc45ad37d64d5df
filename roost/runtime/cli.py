"""The `roost` command: `roost run PATH` starts a system and runs a bootstrap script's root.

The root tree is started as a temporary child of the system: when it fails (its
supervisor gave up) it is not restarted, and the process exits 1 at once naming
it and the cause. SIGINT and SIGTERM shut the system down; a task that ignores
cancellation is abandoned after its timeout plus a grace period, and the process
exits anyway. With `--console [HOST:]PORT` the live system's console is served while
it runs, and after `main(system)` returns it keeps serving until SIGINT or SIGTERM.
`--loop uvloop` runs it all on uvloop's event loop (the `roost[fast]` extra) instead of
asyncio's.

`roost store check|backup` (in `store_commands`) look after a store folder offline;
`roost trace ID` and `roost runs` (in `trace_commands`) show what runs did;
`roost gates` and `roost decide` (in `gate_commands`) list the runs waiting for people
and decide their gates; `roost console --store DIR` (in `console_command`) serves the
console of a store whose system is not running.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeGuard

from roost._logging import get_logger
from roost.actors._cell import KILL_GRACE
from roost.actors.messages import StopReason, Terminated
from roost.actors.supervisor import SupervisorSpec
from roost.errors import BootstrapError, ConfigurationError, ExtraNotInstalled, RoostError
from roost.runtime._signals import ignore_stop_signals, on_stop_signals
from roost.runtime.bootstrap import Root, load_root
from roost.runtime.console_command import (
    add_console_command,
    console_address,
    run_console_command,
    start_console,
)
from roost.runtime.gate_commands import add_gate_commands, run_gate_command
from roost.runtime.gc_tuning import tune_gc
from roost.runtime.log import LOG_FORMATS, LOG_LEVELS
from roost.runtime.loops import LOOPS, loop_factory
from roost.runtime.store_commands import add_store_commands, run_store_command
from roost.runtime.system import ActorSystem
from roost.runtime.trace_commands import add_trace_commands, run_trace_command

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_log = get_logger("roost")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roost", description="The roost actor runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a bootstrap script's root tree or main(system)")
    run.add_argument("target", help="a Python file, a folder with app.py, or module:attr")
    run.add_argument("--store", default=".roost",
                     help="the LMDB store folder (default: .roost), or a postgresql:// URL "
                          "(the system is then a node of that store's cluster)")
    run.add_argument("--durability", choices=("sync", "async"), default="sync")
    run.add_argument("--log-format", choices=LOG_FORMATS, default="auto")
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    run.add_argument("--console", type=console_address, metavar="[HOST:]PORT",
                     help="serve the live console here while the system runs (host "
                          "default: 127.0.0.1; port 0: any free one)")
    run.add_argument("--loop", choices=LOOPS, default="asyncio",
                     help="the event loop to run on (default: asyncio; uvloop needs roost[fast])")
    run.add_argument("--pool", action="append", metavar="NAME", dest="pools",
                     help="a worker pool this node serves for the whole cluster (repeatable; "
                          "a PostgreSQL --store only): steps with pool=NAME run here")
    add_store_commands(commands)
    add_trace_commands(commands)
    add_gate_commands(commands)
    add_console_command(commands)
    return parser


#: The arguments (by their name in the parsed arguments) that an empty string would quietly
#: turn into the current folder, or for --host every interface; what to say instead.
_NOT_EMPTY = {
    "target": "the script to run is empty (''), which would run the current folder's app.py; "
              "give a Python file, a folder with app.py, or module:attr",
    "store": "--store is empty (''), which would mean the current folder; give the store's "
             "folder (e.g. --store .roost; --store . for the current folder) or a "
             "postgresql:// URL",
    "folder": "the store folder is empty (''), which would mean the current folder; give its "
              "path (. for the current folder)",
    "destination": "the backup destination is empty (''), which would mean the current "
                   "folder; give the path of a new or empty folder for the copy",
    "input": "--input is empty (''), which would mean the current folder; give the JSON "
             "file with the decision's input, or - for stdin",
    "tls_cert": "--tls-cert is empty (''), which would mean the current folder; give the PEM "
                "certificate file",
    "tls_key": "--tls-key is empty (''), which would mean the current folder; give the PEM "
               "private key file",
    "host": "--host is empty (''), which would listen on every interface; give the address to "
            "listen on (e.g. 127.0.0.1; 0.0.0.0 for every interface, with TLS)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `roost` console script; returns the exit code.

    When stdout is closed early (`roost gates | head`), the command stops there and the
    process exits 1 quietly, as Unix tools do.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BrokenPipeError:
        # Whatever is still buffered goes nowhere: the interpreter's own flush at exit would
        # fail again and print a warning.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code


def _main(argv: Sequence[str] | None) -> int:
    """Parse the arguments and run the command; the exit code.

    If a task is still running after shutdown because it ignores cancellation, the
    process ends with `os._exit` once the output is flushed: Python cannot kill the
    task, and waiting for it (or for a thread it runs) would keep the process alive
    for ever.
    """
    args = _parser().parse_args(argv)
    for name, refusal in _NOT_EMPTY.items():
        if getattr(args, name, None) == "":
            print(f"roost: {refusal}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "store":
        return run_store_command(args)
    if args.command in ("trace", "runs"):
        return run_trace_command(args)
    if args.command in ("gates", "decide"):
        return run_gate_command(args)
    if args.command == "console":
        tune_gc()  # a console process is roost's too: its pages allocate in bulk
        return run_console_command(args)
    try:
        new_loop = loop_factory(args.loop)
    except ExtraNotInstalled as error:
        print(f"roost: --loop {args.loop} needs the optional extra: pip install 'roost[{error.extra}]'",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        root = load_root(args.target)
    except BootstrapError as error:
        print(f"roost: {error}", file=sys.stderr)
        return EXIT_USAGE
    tune_gc()  # this process is roost's: collect its actors' cycles less often
    abandoned: set[asyncio.Task[Any]] = set()
    code, stuck = _run_to_the_end(_run(root, args, abandoned), abandoned, new_loop)
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run_to_the_end(main: Coroutine[Any, Any, int], abandoned: set[asyncio.Task[Any]],
                    new_loop: Callable[[], asyncio.AbstractEventLoop]) -> tuple[int, bool]:
    """Like `asyncio.run` on a loop from `new_loop`, but a task that ignores cancellation
    cannot hang the exit.

    Returns the exit code, and whether something is left running (a task, or a
    thread of the default executor) that the process must exit without.
    """
    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        try:
            code = loop.run_until_complete(main)
        except KeyboardInterrupt:  # before the signal handlers were installed
            code = EXIT_OK
        if _settle_tasks(loop, abandoned):
            return code, True
        loop.run_until_complete(loop.shutdown_asyncgens())
        executor = loop.create_task(loop.shutdown_default_executor())
        loop.run_until_complete(asyncio.wait({executor}, timeout=KILL_GRACE))
        return code, not executor.done()
    finally:
        ignore_stop_signals()
        asyncio.set_event_loop(None)
        loop.close()


def _settle_tasks(loop: asyncio.AbstractEventLoop, abandoned: set[asyncio.Task[Any]]) -> bool:
    """Cancel the tasks still running; True if any ignores it (it is logged and left).

    Tasks in `abandoned` already had their grace period and are not waited for again.
    """
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel("roost: the process is exiting")
    waited = [task for task in pending if task not in abandoned]
    if waited:
        loop.run_until_complete(asyncio.wait(waited, timeout=KILL_GRACE))
    stuck = [task for task in pending if not task.done()]
    for task in stuck:
        if task not in abandoned:
            _log.error("task_abandoned", task=task.get_name(),
                       detail=f"ignored cancellation for {KILL_GRACE:g}s at exit")
    return bool(stuck)


async def _run(root: Root, args: argparse.Namespace, abandoned: set[asyncio.Task[Any]]) -> int:
    """Run the root in a system until it ends or a signal comes; return the exit code.

    Tasks abandoned on the way (they ignored cancellation) are added to `abandoned`.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum.name)
        stop.set()

    on_stop_signals(loop, on_signal)
    try:
        system = ActorSystem(store=args.store, durability=args.durability,
                             log_format=args.log_format, log_level=args.log_level,
                             pools=args.pools)
    except ConfigurationError as refused:
        print(f"roost: {refused}", file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            async with system:
                console = (None if args.console is None
                           else await start_console(system, *args.console, live=True))
                try:
                    body = (_run_tree(system, root) if isinstance(root, SupervisorSpec)
                            else _run_main(system, root))
                    work = asyncio.ensure_future(body)
                    waiter = asyncio.ensure_future(stop.wait())
                    try:
                        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                    if not work.done():
                        work.cancel(f"roost: received {received[0]}")
                        # A main() that ignores cancellation is left behind: shutdown goes on.
                        await asyncio.wait({work}, timeout=KILL_GRACE)
                        if not work.done():
                            _log.error("task_abandoned", task=work.get_name(),
                                       detail=f"main(system) ignored cancellation for "
                                              f"{KILL_GRACE:g}s")
                            abandoned.add(work)
                    ended = work.result() if work.done() and not work.cancelled() else None
                    if console is not None and not received and not _failed(ended):
                        await _keep_serving(stop, root)
                finally:
                    if console is not None:
                        await console.cleanup()
        finally:
            if system.engine is not None:
                abandoned.update(system.engine.abandoned_tasks)
        if received:
            left = system.engine.abandoned + (1 if work in abandoned else 0)
            print(f"roost: received {received[0]}, shut down "
                  + ("gracefully" if not left else
                     f"after abandoning {left} task{'s' if left > 1 else ''} that ignored "
                     "cancellation"), file=sys.stderr)
            return EXIT_OK
        if _failed(ended):
            error = ended.error
            print(f"roost: root {ended.ref.path} failed: {type(error).__name__}: {error}",
                  file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    except RoostError as error:
        print(f"roost: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:
        print(f"roost: the root failed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED


def _failed(ended: Any) -> TypeGuard[Terminated]:
    return isinstance(ended, Terminated) and ended.reason == StopReason.FAILURE


async def _keep_serving(stop: asyncio.Event, root: Root) -> None:
    """After the root ended well, serve the console on until a signal: its runs (parked at
    gates, say) can still be looked at and decided."""
    ended = "the root tree stopped" if isinstance(root, SupervisorSpec) else "main(system) returned"
    print(f"roost: {ended}; the console keeps serving until Ctrl-C (SIGINT) or SIGTERM",
          file=sys.stderr, flush=True)
    await stop.wait()


async def _run_tree(system: ActorSystem, spec: SupervisorSpec) -> Terminated:
    # Temporary: a root whose supervisor gave up is not restarted by the system's guardian
    # (which would only delay the exit, or keep a slow crash loop alive for ever).
    ref = await system.start(spec, restart="temporary")
    return await system.join(ref)


async def _run_main(system: ActorSystem, main: Root) -> None:
    result = main(system)  # type: ignore[operator]
    if inspect.isawaitable(result):
        await result


if __name__ == "__main__":
    sys.exit(main())
