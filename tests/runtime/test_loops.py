"""Tests of roost/runtime/loops.py and `roost run --loop`: the chosen event loop is the one that runs.

`--loop asyncio` (the default) and `--loop uvloop` run main(system) and its actors on that
loop, signals included; without the `roost[fast]` extra, `--loop uvloop` exits 2 saying
what to install, before the script runs.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from roost.errors import ExtraNotInstalled
from roost.runtime.loops import installed_loops, loop_factory

REPO = Path(__file__).resolve().parents[2]
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None

LOOP_REPORTER = """\
    import asyncio

    import roost


    class Where(roost.Message):
        pass


    class Reporter(roost.Actor):
        async def receive(self, message):
            return type(asyncio.get_running_loop()).__module__.partition(".")[0]


    async def main(system: roost.ActorSystem) -> None:
        reporter = system.spawn(Reporter, name="reporter")
        here = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        print(here, await reporter.ask(Where()), flush=True)
        await asyncio.sleep(3600)  # until SIGTERM
"""


def write_reporter(tmp_path: Path) -> Path:
    script = tmp_path / "reporter.py"
    script.write_text(textwrap.dedent(LOOP_REPORTER))
    return script


@pytest.mark.parametrize(("options", "loop"), [
    ([], "asyncio"),
    (["--loop", "asyncio"], "asyncio"),
    pytest.param(["--loop", "uvloop"], "uvloop",
                 marks=pytest.mark.skipif(not HAS_UVLOOP, reason="needs roost[fast] (uvloop)")),
])
def test_roost_run_runs_main_its_actors_and_signals_on_the_chosen_loop(
        tmp_path: Path, options: list[str], loop: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "roost.runtime.cli", "run", str(write_reporter(tmp_path)), *options,
         "--store", str(tmp_path / "store"), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert line == f"{loop} {loop}\n", err
    assert process.returncode == 0, err
    assert "roost: received SIGTERM, shut down gracefully" in err


def test_roost_run_loop_uvloop_without_the_extra_exits_2_saying_what_to_install(tmp_path: Path) -> None:
    # sys.modules["uvloop"] = None makes `import uvloop` fail as if it were not installed.
    store = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['uvloop'] = None; from roost.runtime.cli import main; "
         "sys.exit(main(sys.argv[1:]))",
         "run", str(write_reporter(tmp_path)), "--loop", "uvloop", "--store", str(store)],
        cwd=REPO, capture_output=True, text=True, timeout=30.0,
    )
    assert result.returncode == 2
    assert result.stderr == "roost: --loop uvloop needs the optional extra: pip install 'roost[fast]'\n"
    assert result.stdout == ""
    assert not store.exists()  # nothing ran


def test_without_uvloop_only_asyncio_is_installed_and_asking_for_uvloop_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert installed_loops() == ("asyncio",)
    with pytest.raises(ExtraNotInstalled, match=r"pip install 'roost\[fast\]'"):
        loop_factory("uvloop")


@pytest.mark.skipif(not HAS_UVLOOP, reason="needs roost[fast] (uvloop)")
def test_with_uvloop_both_loops_are_installed_and_each_factory_makes_its_own_loop() -> None:
    assert installed_loops() == ("asyncio", "uvloop")
    for name in installed_loops():
        loop = loop_factory(name)()
        try:
            assert type(loop).__module__.partition(".")[0] == name
        finally:
            loop.close()


def test_an_unknown_loop_name_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown event loop 'trio'; choose one of: asyncio, uvloop"):
        loop_factory("trio")
