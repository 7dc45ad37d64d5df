"""`roost gates` and `roost decide`: list the runs waiting for people and decide their gates.

Both open the store with a real `ActorSystem` while no other system has it open (the
store has one owner), so the deadline timer and the decision checks are the live
ones: deadlines that passed while no process ran are applied first, then the command
lists or decides. The pipelines are not loaded here, so an edit's input is checked
against the JSON Schema stored with the gate. A decided run is `queued`; it resumes
when a system registers its pipeline with `resume=True` (e.g. the next `roost run`).
A gate record that does not decode is left out of `roost gates`' list and named on
stderr, and the command exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from roost.errors import RecordCorrupt, RoostError, StoreUnavailable
from roost.runtime._store_option import add_store_option, report_damaged
from roost.runtime.log import configure_logging
from roost.runtime.system import ActorSystem
from roost.storage import GateRecord, RunStatus, is_postgres_url, open_store
from roost.storage._environment import permission_denied
from roost.storage._integrity import DATA_FILE, recorded_id
from roost.storage.gates import PENDING, gate_of_key

EXIT_OK, EXIT_FAILED = 0, 1
#: The longest the commands wait for the gate timer to apply deadlines that have passed.
DEADLINE_CATCH_UP = 5.0
_POLL = 0.02
#: The fields of a gate record that hold JSON bytes; `--json` embeds them as JSON.
_JSON_FIELDS = ("input_schema", "shown", "input")


def add_gate_commands(commands: Any) -> None:
    """Add `gates` and `decide` to the `roost` command's subparsers."""
    gates = commands.add_parser("gates", help="list the gates waiting for a decision, oldest "
                                              "first (stop the store's system first)")
    add_store_option(gates)
    gates.add_argument("--assignee", help="only gates assigned to this person or group")
    gates.add_argument("--pipeline", help="only gates of runs of this pipeline")
    gates.add_argument("--older-than", type=_seconds, metavar="SECONDS",
                       help="only gates open for more than this many seconds")
    gates.add_argument("--json", action="store_true", help="print the gate records as JSON "
                                                           "lines")
    decide = commands.add_parser("decide", help="decide a gate; the run resumes when its "
                                                "pipeline is next registered with resume=True")
    decide.add_argument("run_id", metavar="RUN_ID")
    decide.add_argument("gate", metavar="GATE", help="the gate's name (see `roost gates`)")
    decide.add_argument("decision", metavar="DECISION", help="approve, reject or edit; at an "
                                                             "outcome gate done, not_done or abandon")
    decide.add_argument("--by", required=True, help="who decides (kept in the audit trail)")
    add_store_option(decide)
    decide.add_argument("--input", metavar="FILE", help="a JSON file with the decision's input "
                                                        "(an edit's data); - reads stdin")
    decide.add_argument("--comment", help="why, for the audit trail")


def run_gate_command(args: argparse.Namespace) -> int:
    """Run `roost gates` or `roost decide`: 0 when done, 1 when it could not be done."""
    # Logs go to stderr, errors only: stdout is the report.
    configure_logging("auto", "error")
    try:
        require_store(args.store)
        if args.command == "gates":
            return asyncio.run(_gates(args))
        decision_input = None if args.input is None else read_input(args.input)
        return asyncio.run(_decide(args, decision_input))
    except InputUnreadable as error:
        print(f"roost: {error}", file=sys.stderr)
    except StoreUnavailable as error:
        print(f"roost: StoreUnavailable: {error}", file=sys.stderr)
        if "already open" in error.reason:
            print("roost: a store has one owner: stop that system first, or list and decide its "
                  "gates through it (system.gates.pending(), system.gates.decide(...))",
                  file=sys.stderr)
    except RoostError as error:
        print(f"roost: {type(error).__name__}: {error}", file=sys.stderr)
    return EXIT_FAILED


def require_store(path: str) -> None:
    """Raise StoreUnavailable unless `path` (a folder or a PostgreSQL URL) holds a store (a
    system would create one there) that this process may read."""
    if is_postgres_url(path):
        asyncio.run(_probe(path))
        return
    folder = Path(path)
    try:
        held = folder.is_dir() and ((folder / DATA_FILE).is_file()
                                    or recorded_id(folder) is not None)
    except PermissionError as exc:
        raise permission_denied(path, exc) from exc
    if not held:
        raise StoreUnavailable(path, "there is no store in this folder; check the path (a "
                                     "system creates it when it first starts)")


async def _probe(url: str) -> None:
    """Open the PostgreSQL store at `url` without creating one, and close it."""
    async with open_store(url, readonly=True, create=False):
        pass


class InputUnreadable(Exception):
    """`--input` names a file that cannot be read or does not hold JSON."""


def read_input(source: str) -> Any:
    """The JSON value in file `source` (`-`: stdin).

    Raises:
        InputUnreadable: naming the file, and for bad JSON the line and column.
    """
    name = "stdin" if source == "-" else repr(source)
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as error:
        raise InputUnreadable(f"--input {name}: cannot read it ({error.strerror or error})") \
            from None
    try:
        return json.loads(data, parse_constant=_not_json)
    except json.JSONDecodeError as error:
        raise InputUnreadable(f"--input {name} is not valid JSON: {error.msg} at line "
                              f"{error.lineno}, column {error.colno}") from None
    except ValueError as error:  # not UTF-8 text, or NaN / Infinity
        raise InputUnreadable(f"--input {name} is not valid JSON: {error}") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


async def _gates(args: argparse.Namespace) -> int:
    """List the waiting gates that can be read; exit 1, after naming them, if some records
    cannot."""
    damaged: list[RecordCorrupt] = []
    async with _open_system(args.store) as system:
        store = system.gates.store
        # The store's list, not `system.gates.pending`: that one fails on the first damaged record.
        cutoff = None if args.older_than is None else store.clock() - args.older_than
        records = sorted((r for r in await store.list(status=PENDING, damaged=damaged)
                          if (args.assignee is None or args.assignee in r.assignees)
                          and (args.pipeline is None or r.pipeline == args.pipeline)
                          and (cutoff is None or r.opened_at <= cutoff)),
                         key=lambda r: r.opened_at)
        where = system.store.path
    _print_gates(args, records)
    if not damaged:
        return EXIT_OK
    report_damaged("gate", [_gate_name(error.key) for error in damaged], where)
    return EXIT_FAILED


def _print_gates(args: argparse.Namespace, records: list[GateRecord]) -> None:
    if args.json:
        for record in records:
            print(gate_json(record))
    elif not records:
        print("no gates are waiting")
    else:
        now = time.time()
        rows = [[r.run_id, r.gate, age(now - r.opened_at), ",".join(r.assignees) or "-",
                 " ".join(r.reason.split())] for r in records]
        print("\n".join(_table(["RUN", "GATE", "AGE", "ASSIGNEES", "REASON"], rows)))


def _gate_name(key: bytes) -> str:
    """A damaged gate record by its run and gate, as its key holds them (else the key)."""
    named = gate_of_key(key)
    if named is None:
        return f"the one at key {key!r}"
    run_id, gate = named
    return f"gate {gate!r} of run {run_id!r}"


async def _decide(args: argparse.Namespace, decision_input: Any) -> int:
    async with _open_system(args.store) as system:
        asked = time.time()
        record = await system.gates.decide(args.run_id, args.gate, args.decision,
                                           input=decision_input, by=args.by,
                                           comment=args.comment)
        run = await system.pipelines.runs.get(args.run_id)
    where = f"gate {record.gate!r} of run {record.run_id!r}"
    if record.decided_at is not None and record.decided_at < asked:
        print(f"{where} was already decided that way: {record.decision} by {record.by}; "
              "nothing changed")
    else:
        print(f"recorded at {where}: {record.decision} by {record.by}"
              + (f" ({record.comment})" if record.comment else ""))
    if run.status == RunStatus.QUEUED:
        print(f"run {run.run_id!r} is queued: it resumes when a system registers pipeline "
              f"{run.pipeline!r} with resume=True (e.g. the next `roost run` of its app)")
    else:
        print(f"run {run.run_id!r} is {run.status.value}")
    return EXIT_OK


@contextlib.asynccontextmanager
async def _open_system(path: str) -> AsyncIterator[ActorSystem]:
    """An `ActorSystem` on the store at `path`, once its gate timer has applied the deadlines
    that passed (a live system would have applied them already).

    Raises:
        StoreUnavailable: another process has the store open.
    """
    async with ActorSystem(store=path, log_format=None) as system:
        await _catch_up_deadlines(system)
        yield system


async def _catch_up_deadlines(system: ActorSystem) -> None:
    """Wait (a bounded time) until no stored deadline has passed: the system's own gate
    timer applies them as it started."""
    store = system.gates.store
    for _ in range(round(DEADLINE_CATCH_UP / _POLL)):
        if not await store.due(time.time(), limit=1):
            return
        await asyncio.sleep(_POLL)


def gate_json(record: GateRecord) -> str:
    """`record` as one line of JSON, its JSON-bytes fields embedded as JSON values."""
    fields = msgspec.structs.asdict(record)
    for name in _JSON_FIELDS:
        if fields[name] is not None:
            fields[name] = msgspec.Raw(fields[name])
    return msgspec.json.encode(fields).decode()


def age(seconds: float) -> str:
    """A duration the way people read it: 45s, 12m, 3h, 2d (rounded down)."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds (0 or more)")
    return number
