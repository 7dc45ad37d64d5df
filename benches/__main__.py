"""Run roost's benches: `python -m benches [--json] [--markdown] [--only NAME] [--list] [--loop LOOP]`.

Every module in this folder whose name does not start with `_` is a bench. It
declares `NAMES` (the figures it reports) and `measure() -> list[Figure]`,
each figure measured against a baseline in the same run and process, and may declare
`TARGETS` (figure name -> `Target`), which the `--markdown` table shows.

Each bench runs once per event loop of `--loop` (default: both asyncio and uvloop when
uvloop is installed, else asyncio); a figure measured on uvloop is named `NAME[uvloop]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

import roost
from benches import _report
from benches._figure import Figure, event_loop
from roost.errors import ExtraNotInstalled
from roost.runtime.loops import LOOPS, installed_loops, loop_factory


def discover() -> list[ModuleType]:
    folder = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(folder)]) if not m.name.startswith("_"))
    return [importlib.import_module(f"benches.{name}") for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object per figure")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only the bench reporting this figure (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the figure names and exit")
    parser.add_argument("--markdown", action="store_true",
                        help="also keep the figures in benches/results.json and rewrite the "
                             "table in benches/README.md (rows not measured stay as they were)")
    parser.add_argument("--loop", choices=(*LOOPS, "both"),
                        help="the event loop(s) to measure on (default: both when uvloop is "
                             "installed, else asyncio)")
    args = parser.parse_args(argv)
    loops = (installed_loops() if args.loop is None else LOOPS if args.loop == "both"
             else (args.loop,))
    for loop in loops:
        try:
            loop_factory(loop)
        except ExtraNotInstalled as error:
            print(f"python -m benches: --loop {args.loop} needs the optional extra: "
                  f"pip install 'roost[{error.extra}]'", file=sys.stderr)
            return 2
    roost.tune_gc()  # as `roost run` does; every baseline runs in this process too
    modules = discover()
    if args.list:
        for module in modules:
            print("\n".join(module.NAMES))
        return 0
    wanted = set(args.only or [])
    known = {name for module in modules for name in module.NAMES}
    unknown = wanted - known
    if unknown:
        print(f"unknown bench name(s): {', '.join(sorted(unknown))}; "
              f"known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    measured: list[Figure] = []
    loop_of: dict[str, str] = {}
    if not args.json:
        print(f"{'name':<42} {'value':>14} {'unit':<14} {'baseline':<34} {'baseline':>14} {'ratio':>7}")
    for module in modules:
        if wanted and not wanted & set(module.NAMES):
            continue
        for loop in loops:
            with event_loop(loop):
                figures: list[Figure] = module.measure()
            for figure in figures:
                if wanted and figure.name not in wanted and not wanted & set(module.NAMES):
                    continue
                named = figure.on_loop(loop)
                measured.append(named)
                loop_of[named.name] = loop
                _print(named, args.json)
    if args.markdown:
        targets = {name: target for module in modules
                   for name, target in getattr(module, "TARGETS", {}).items()}
        _report.rewrite_readme(_report.table(_report.record(measured, loop_of), targets))
        print(f"wrote {_report.RESULTS} and the table in {_report.README}", file=sys.stderr)
    return 0


def _print(figure: Figure, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figure.as_json()), flush=True)
    else:
        print(f"{figure.name:<42} {figure.value:>14,.1f} {figure.unit:<14} "
              f"{figure.baseline:<34} {figure.baseline_value:>14,.1f} {figure.ratio:>7.2f}",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
