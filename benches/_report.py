"""The figures table in benches/README.md, refreshed by `python -m benches --markdown`.

Every measured figure is kept in `benches/results.json` (its value, baseline, ratio, the
loop and the day it was measured), so a run of a few benches (`--only`) refreshes their
rows and leaves the others as last measured. The table is rewritten between two marker
lines in the README; the targets come from each bench module's `TARGETS`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from benches._figure import Figure, Target

HERE = Path(__file__).parent
RESULTS = HERE / "results.json"
README = HERE / "README.md"
BEGIN = "<!-- figures: begin (python -m benches --markdown rewrites this table) -->"
END = "<!-- figures: end -->"


def record(figures: Iterable[Figure], loop_of: Mapping[str, str],
           path: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Merge freshly measured figures into the results file; return every kept result."""
    results: dict[str, dict[str, Any]] = {}
    if path.exists():
        try:
            results = json.loads(path.read_text())
        except ValueError as error:
            raise SystemExit(f"{path} does not hold the figures as JSON ({error}); restore it "
                             "with git, or delete it to start the table afresh") from None
    today = datetime.date.today().isoformat()
    for figure in figures:
        entry = figure.as_json()
        del entry["name"]
        results[figure.name] = {**entry, "loop": loop_of[figure.name],
                                "measured": today}
    path.write_text(json.dumps(dict(sorted(results.items())), indent=1) + "\n")
    return results


def table(results: Mapping[str, Mapping[str, Any]], targets: Mapping[str, Target]) -> str:
    """The markdown table of every result, in name order, with its target and verdict."""
    lines = ["| figure | value | unit | baseline | baseline value | ratio | target | measured |",
             "|---|---:|---|---|---:|---:|---|---|"]
    for name, entry in sorted(results.items()):
        target = targets.get(name.removesuffix("[uvloop]"))
        verdict = "" if target is None else (" met" if target.met(entry) else " **missed**")
        lines.append(
            f"| `{name}` | {_number(entry['value'])} | {entry['unit']} | {entry['baseline']} "
            f"| {_number(entry['baseline_value'])} | {entry['ratio']:.2f} "
            f"| {target or ''}{verdict} | {entry['measured']} |")
    return "\n".join(lines)


def rewrite_readme(text: str, path: Path = README) -> None:
    """Put `text` between the README's marker lines (appended with them if missing)."""
    readme = path.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        readme = head + block + rest.split(END, 1)[1]
    else:
        readme = readme.rstrip("\n") + "\n\n## Latest figures\n\n" + block + "\n"
    path.write_text(readme)


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
