"""`roost console --store DIR` serves the console of a store on its own, and `start_console`
serves it beside a running system (`roost run app.py --console [HOST:]PORT`).

A store has one owner process: `roost console` opens it with a real `ActorSystem` that
runs no pipelines (runs, traces and gates can be read and decided; decided runs resume
in the next process that registers their pipeline), so beside a running system use that
system's console instead. The token comes from `ROOST_CONSOLE_TOKEN` or the store's
`console.token`; a generated one is printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from roost.console import create_app, load_token, serve
from roost.console.app import is_loopback
from roost.errors import ConfigurationError, RoostError, StoreUnavailable
from roost.runtime._signals import ignore_stop_signals, on_stop_signals
from roost.runtime._store_option import add_store_option
from roost.runtime.gate_commands import require_store
from roost.runtime.system import ActorSystem

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8470


def add_console_command(commands: Any) -> None:
    """Add `console` to the `roost` command's subparsers."""
    console = commands.add_parser("console", help="serve the console of a store (stop the "
                                                  "store's system first, or use its --console)")
    add_store_option(console)
    console.add_argument("--host", default=DEFAULT_HOST,
                         help=f"the address to listen on (default: {DEFAULT_HOST})")
    console.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                         help=f"the port to listen on, 0 for a free one (default: {DEFAULT_PORT})")
    console.add_argument("--tls-cert", metavar="FILE",
                         help="serve HTTPS with this PEM certificate (needs --tls-key)")
    console.add_argument("--tls-key", metavar="FILE",
                         help="the PEM private key of --tls-cert")


def run_console_command(args: argparse.Namespace) -> int:
    """Run `roost console` until SIGINT or SIGTERM: 0 then, 1 when it could not serve, 2 for
    a TLS option without its partner."""
    if (args.tls_cert is None) != (args.tls_key is None):
        print("roost: --tls-cert and --tls-key go together; give both, or neither for "
              "plain HTTP", file=sys.stderr)
        return EXIT_USAGE
    tls = None if args.tls_cert is None else (Path(args.tls_cert), Path(args.tls_key))
    try:
        require_store(args.store)
        try:
            return asyncio.run(_serve_store(args.store, args.host, args.port, tls))
        finally:
            ignore_stop_signals()
    except StoreUnavailable as error:
        print(f"roost: StoreUnavailable: {error}", file=sys.stderr)
        if "already open" in error.reason:
            print("roost: a store has one owner: use that system's console: "
                  "roost run app.py --console PORT", file=sys.stderr)
    except RoostError as error:
        print(f"roost: {type(error).__name__}: {error}", file=sys.stderr)
    return EXIT_FAILED


async def _serve_store(store: str, host: str, port: int, tls: tuple[Path, Path] | None) -> int:
    stop = asyncio.Event()
    received: list[str] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum.name)
        stop.set()

    on_stop_signals(loop, on_signal)
    async with ActorSystem(store=store, tracing=True, log_format="auto",
                           log_level="warning") as system:
        runner = await start_console(system, host, port, live=False, tls=tls)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
    print(f"roost: received {received[0]}, console stopped", file=sys.stderr)
    return EXIT_OK


async def start_console(system: ActorSystem, host: str, port: int, *, live: bool,
                        tls: tuple[Path, Path] | None = None) -> web.AppRunner:
    """Serve the console of `system` on `host:port` and print its address (and the token,
    the one time it is generated); returns the runner, to `await runner.cleanup()`.

    Raises:
        ConfigurationError: no token can be had, or the address or the TLS files cannot
            be used.
    """
    for path in tls or ():
        if not path.is_file():
            raise ConfigurationError(f"{path}: no such TLS file; check --tls-cert and --tls-key")
    token, generated = load_token(system.store_path)
    if generated:
        print(f"console token (saved in {system.store_path}/console.token, shown once): {token}",
              flush=True)
    app = create_app(system, token=token, live=live, secure=tls is not None)
    try:
        runner = await serve(app, host, port, tls=tls)
    except ssl.SSLError as error:
        why = error.reason or error
        raise ConfigurationError(f"the TLS certificate or key does not load ({why}); give a "
                                 "PEM certificate and its own private key") from None
    except OSError as error:
        raise ConfigurationError(f"cannot serve the console on {host}:{port}: "
                                 f"{error.strerror or error}; choose another port or host") \
            from None
    if tls is None and not is_loopback(host):
        print(f"roost: warning: the console on {host} is not loopback and has no TLS: the token "
              "and sessions cross the network in clear text; bind to 127.0.0.1 or use TLS",
              file=sys.stderr, flush=True)
    scheme = "https" if tls is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    print(f"roost console: {scheme}://{shown}:{bound_port(runner)}/ (sign in with the "
          "console token)", flush=True)
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port `runner` listens on (the free one picked for port 0)."""
    port: int = runner.addresses[0][1]
    return port


def console_address(value: str) -> tuple[str, int]:
    """`[HOST:]PORT` (an IPv6 host in brackets) as (host, port); argparse type of `--console`."""
    host, colon, port = value.rpartition(":")
    if not colon:
        return DEFAULT_HOST, port_number(value)
    host = host.removeprefix("[").removesuffix("]")
    if not host:
        raise argparse.ArgumentTypeError(f"{value!r} has no host before the ':'; use PORT or "
                                         "HOST:PORT, e.g. 8470 or 127.0.0.1:8470")
    return host, port_number(port)


def port_number(value: str) -> int:
    """A TCP port, 0 (any free one) to 65535; argparse type."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port; use a number from 0 (any free "
                                         "port) to 65535")
    return number
