"""`roost store check DIR` and `roost store backup DIR DEST`: look after a store folder offline."""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from typing import Any

from roost.errors import StoreError
from roost.storage.maintenance import CheckReport, backup_store, check_store

EXIT_OK, EXIT_DAMAGED = 0, 1


def add_store_commands(commands: Any) -> None:
    """Add `store check` and `store backup` to the `roost` command's subparsers."""
    store = commands.add_parser("store", help="check or back up a store folder (stop its system first)")
    actions = store.add_subparsers(dest="store_command", required=True)
    check = actions.add_parser("check", help="read every record and report what does not decode")
    check.add_argument("folder", help="the store folder")
    backup = actions.add_parser("backup", help="copy the store, consistently and compacted")
    backup.add_argument("folder", help="the store folder")
    backup.add_argument("destination", help="a new or empty folder for the copy")


def run_store_command(args: argparse.Namespace) -> int:
    """Run `roost store ...`; 0 when the store is sound (or backed up), 1 when it is not."""
    if args.store_command == "check":
        return _check_in_child(args.folder)
    try:
        target = asyncio.run(backup_store(args.folder, args.destination))
        print(f"roost: backed up {args.folder} to {target}")
        return EXIT_OK
    except StoreError as error:
        print(f"roost: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_DAMAGED


def _check_in_child(folder: str) -> int:
    """Check in a child process: on some damage LMDB aborts the process reading it, and the
    check must still end in a clear verdict."""
    child = subprocess.run([sys.executable, "-c", _CHILD, folder], check=False)
    if child.returncode >= 0:
        return child.returncode
    signal_name = signal.Signals(-child.returncode).name
    print(f"roost: StoreCorrupt: the store at {folder!r} is damaged: LMDB stopped the process "
          f"reading it ({signal_name}); restore the folder from a backup", file=sys.stderr)
    return EXIT_DAMAGED


def check_here(folder: str) -> int:
    """`roost store check` in this process: print the report; the exit code."""
    try:
        report = asyncio.run(check_store(folder))
    except StoreError as error:
        print(f"roost: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_DAMAGED
    _print_report(report)
    return EXIT_OK if report.ok else EXIT_DAMAGED


_CHILD = "import sys; from roost.runtime.store_commands import check_here; sys.exit(check_here(sys.argv[1]))"


def _print_report(report: CheckReport) -> None:
    counts = ", ".join(f"{db}={count}" for db, count in report.records.items())
    print(f"store {report.path} (id {report.store_id}): {counts}")
    for problem in report.problems:
        where = f"{problem.db}[{_printable(problem.key)}]" if problem.key else problem.db
        print(f"  unreadable: {where}: {problem.error}")
    verdict = "every record decodes" if report.ok else f"{len(report.problems)} unreadable"
    print(f"roost: {verdict}")


def _printable(key: str) -> str:
    """`key` with the characters a terminal would not show (the NUL between a run id and a
    step or gate name) written as escapes, e.g. `run-1\\x00draft`."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in key)
