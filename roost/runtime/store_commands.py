"""`roost store check DIR` and `roost store backup DIR DEST`: look after a store folder offline."""

from __future__ import annotations

import argparse
import asyncio
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
    try:
        if args.store_command == "check":
            report = asyncio.run(check_store(args.folder))
            _print_report(report)
            return EXIT_OK if report.ok else EXIT_DAMAGED
        target = asyncio.run(backup_store(args.folder, args.destination))
        print(f"roost: backed up {args.folder} to {target}")
        return EXIT_OK
    except StoreError as error:
        print(f"roost: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_DAMAGED


def _print_report(report: CheckReport) -> None:
    counts = ", ".join(f"{db}={count}" for db, count in report.records.items())
    print(f"store {report.path} (id {report.store_id}): {counts}")
    for problem in report.problems:
        where = f"{problem.db}[{problem.key}]" if problem.key else problem.db
        print(f"  unreadable: {where}: {problem.error}")
    verdict = "every record decodes" if report.ok else f"{len(report.problems)} unreadable"
    print(f"roost: {verdict}")
