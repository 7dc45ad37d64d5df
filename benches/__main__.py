"""Run roost's benches: `python -m benches [--json] [--only NAME] [--list]`.

Every module in this folder whose name does not start with `_` is a bench. It
declares `NAMES` (the figures it reports) and `measure() -> list[Figure]`,
each figure measured against a baseline in the same run and process.
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
from benches._figure import Figure


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
    args = parser.parse_args(argv)
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
    if not args.json:
        print(f"{'name':<34} {'value':>14} {'unit':<14} {'baseline':<34} {'baseline':>14} {'ratio':>7}")
    for module in modules:
        if wanted and not wanted & set(module.NAMES):
            continue
        figures: list[Figure] = module.measure()
        for figure in figures:
            if wanted and figure.name not in wanted and not wanted & set(module.NAMES):
                continue
            if args.json:
                print(json.dumps(figure.as_json()), flush=True)
            else:
                print(f"{figure.name:<34} {figure.value:>14,.1f} {figure.unit:<14} "
                      f"{figure.baseline:<34} {figure.baseline_value:>14,.1f} {figure.ratio:>7.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
