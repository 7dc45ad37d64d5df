"""`python -m benches --markdown`: figures are kept per name and the README table is rewritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from benches._figure import Figure, Target
from benches._report import BEGIN, END, record, rewrite_readme, table


def test_a_partial_run_refreshes_its_rows_and_keeps_the_others(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    record([Figure("a", 10.0, "ops/s", "raw", 20.0), Figure("b", 5.0, "ops/s", "raw", 5.0)],
           {"a": "asyncio", "b": "asyncio"}, results)
    kept = record([Figure("a[uvloop]", 30.0, "ops/s", "raw", 20.0)], {"a[uvloop]": "uvloop"},
                  results)
    assert set(kept) == {"a", "a[uvloop]", "b"}
    assert kept["a"]["ratio"] == 0.5 and kept["a[uvloop]"]["ratio"] == 1.5
    assert kept["a[uvloop]"]["loop"] == "uvloop"


def test_the_table_judges_each_figure_against_its_target_on_either_loop(tmp_path: Path) -> None:
    results = record([Figure("a", 10.0, "ops/s", "raw", 20.0),
                      Figure("a[uvloop]", 30.0, "ops/s", "raw", 20.0),
                      Figure("spawn", 60_000.0, "actors/s", "raw", 1.0)],
                     {"a": "asyncio", "a[uvloop]": "uvloop", "spawn": "asyncio"},
                     tmp_path / "results.json")
    rows = {line.split("|")[1].strip(): line
            for line in table(results, {"a": Target(ratio=0.9),
                                        "spawn": Target(value=50_000)}).splitlines()[2:]}
    assert "ratio >= 0.9 **missed**" in rows["`a`"]
    assert "ratio >= 0.9 met" in rows["`a[uvloop]`"]
    assert ">= 50,000 met" in rows["`spawn`"]


def test_the_readme_keeps_everything_outside_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# benches\n\nprose\n")
    rewrite_readme("| old |", readme)
    rewrite_readme("| new |", readme)
    text = readme.read_text()
    assert text.startswith("# benches\n\nprose\n")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "| new |" in text and "| old |" not in text


def test_a_damaged_results_file_is_named_and_left_as_it_was(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text('{"a": ')
    with pytest.raises(SystemExit, match=r"results\.json does not hold the figures as JSON"):
        record([Figure("a", 1.0, "ops/s", "raw", 1.0)], {"a": "asyncio"}, results)
    assert results.read_text() == '{"a": '
