"""Tests of roost/runtime/cli.py and bootstrap.py: `roost run` as a real process, and its exit codes.

0: the root ended (or SIGTERM shut it down gracefully); 1: the root failed, with a one-line
`roost: root /PATH failed: IntensityExceeded: ...` (the root is never restarted); 2: the
script is missing, broken or defines no root.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.runtime import cli

REPO = Path(__file__).resolve().parents[2]
ROOST = REPO / ".venv" / "bin" / "roost"
MODULE = [sys.executable, "-m", "roost.runtime.cli"]


def run(args: list[str], tmp_path: Path, *, command: list[str] = MODULE,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "run", *args, "--store", str(tmp_path / "store")],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def write_script(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line of the process's stdout, or an assertion error after `timeout` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"the script printed nothing within {timeout}s; stderr: {err}")
    return process.stdout.readline()


# --- real processes -------------------------------------------------------------------------


def test_roost_run_of_the_hello_example_exits_0(tmp_path: Path) -> None:
    result = run(["examples/hello.py", "--log-level", "warning"], tmp_path, command=[str(ROOST)])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    assert lines[0] == "hello ada (greeting #1 from /app/greeter)"
    assert lines[1].startswith("hello ada (greeting #1 from /app/greeters/greeters-")
    assert "roost:" not in result.stderr


GRACEFUL = """\
    import asyncio
    from pathlib import Path

    import roost

    OUT = Path({out!r})


    class Recorder(roost.Actor):
        async def on_stop(self) -> None:
            with OUT.open("a") as out:
                out.write(self.ctx.path + "\\n")

        async def receive(self, message):
            return None


    class RecordingSupervisor(roost.Supervisor):
        async def on_stop(self) -> None:
            with OUT.open("a") as out:
                out.write(self.ctx.path + "\\n")


    tree = RecordingSupervisor.spec("app", children=[
        roost.ChildSpec(factory=Recorder, name="a"),
        roost.ChildSpec(factory=Recorder, name="b"),
        roost.Pool.spec("pool", Recorder, size=2),
    ])


    async def main(system):
        await system.start(tree)
        system.spawn(Recorder, name="late")
        print("ready", flush=True)
        await asyncio.Event().wait()
"""


def test_sigterm_shuts_the_tree_down_gracefully_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "stopped.txt"
    script = write_script(tmp_path, "graceful.py", GRACEFUL.format(out=str(out)))
    process = subprocess.Popen(
        [*MODULE, "run", str(script), "--store", str(tmp_path / "store"), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert read_line(process, timeout=20.0) == "ready\n"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "roost: received SIGTERM, shut down gracefully" in err
    # Every on_stop ran, in reverse start order, children before their parents; a pool's
    # workers stop together, so in any order.
    stopped = out.read_text().splitlines()
    assert stopped[0] == "/late"
    assert sorted(stopped[1:3]) == ["/app/pool/pool-1", "/app/pool/pool-2"]
    assert stopped[3:] == ["/app/b", "/app/a", "/app"]


def test_signals_that_keep_coming_while_it_exits_still_end_in_exit_0(tmp_path: Path) -> None:
    # A process manager may repeat its SIGTERM; one landing after the loop has closed must
    # not turn the clean exit into death by signal.
    script = write_script(tmp_path, "graceful.py", GRACEFUL.format(out=str(tmp_path / "o")))
    codes = []
    for _ in range(3):
        process = subprocess.Popen(
            [*MODULE, "run", str(script), "--store", str(tmp_path / "store"),
             "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert read_line(process, timeout=20.0) == "ready\n"
            deadline = time.monotonic() + 20.0
            while process.poll() is None and time.monotonic() < deadline:
                process.send_signal(signal.SIGTERM)
                time.sleep(0.002)
            codes.append(process.wait(timeout=20.0))
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert codes == [0, 0, 0]


ESCALATING = """\
    import asyncio
    from pathlib import Path

    import roost

    OUT = Path({out!r})


    class Crash(roost.Message):
        pass


    class Crasher(roost.Actor):
        async def on_start(self) -> None:
            with OUT.open("a") as out:
                out.write("start\\n")
            # Crash {after} s after every start.
            asyncio.get_running_loop().call_later({after}, self.ctx.self_ref.tell, Crash())

        async def receive(self, message):
            raise RuntimeError("worker crashed")


    root = roost.Supervisor.spec("top", max_restarts={top_restarts}, within=60.0, children=[
        roost.Supervisor.spec("mid", max_restarts=0, children=[
            roost.ChildSpec(factory=Crasher, name="worker", poison_after=1),
        ]),
    ])
"""


def test_a_root_past_its_intensity_is_not_restarted_and_exits_1_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "starts.txt"
    script = write_script(tmp_path, "escalating.py",
                          ESCALATING.format(out=str(out), after=0.0, top_restarts=0))
    started = time.monotonic()
    result = run([str(script), "--log-level", "critical"], tmp_path)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 10.0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "roost: root /top failed: IntensityExceeded: /top: more than 0 restarts within 60s")
    assert "IntensityExceeded: /top/mid: more than 0 restarts" in lines[0]
    assert "RuntimeError: worker crashed" in lines[0]
    assert out.read_text().splitlines() == ["start"]  # the root was not started again


def test_a_slowly_crash_looping_root_that_gives_up_exits_instead_of_being_restarted(
    tmp_path: Path,
) -> None:
    # The worker crashes 0.6 s after each start and /top gives up on the second crash, so a
    # root restarted by the system would fail about once a second: never 10 times in 10 s.
    out = tmp_path / "starts.txt"
    script = write_script(tmp_path, "slow.py",
                          ESCALATING.format(out=str(out), after=0.6, top_restarts=1))
    result = run([str(script), "--log-level", "critical"], tmp_path, timeout=15.0)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("roost: root /top failed: IntensityExceeded: /top: more than 1 restarts")
    assert "RuntimeError: worker crashed" in line
    assert out.read_text().splitlines() == ["start", "start"]


STUBBORN = """\
    import asyncio

    import roost


    class Stubborn(roost.Actor):
        shutdown_timeout = 0.2

        async def on_stop(self) -> None:
            while True:  # swallows every cancellation
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass

        async def receive(self, message):
            return None


    async def main(system):
        await system.start(Stubborn, name="stubborn")
        print("ready", flush=True)
        await asyncio.Event().wait()
"""


def test_sigterm_exits_even_when_an_on_stop_swallows_cancellation(tmp_path: Path) -> None:
    script = write_script(tmp_path, "stubborn.py", STUBBORN)
    process = subprocess.Popen(
        [*MODULE, "run", str(script), "--store", str(tmp_path / "store"), "--log-level", "error"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert read_line(process, timeout=20.0) == "ready\n"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10.0)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    # Cancelled after its 0.2 s timeout, abandoned after the 1 s grace: no further waiting.
    assert elapsed < 5.0, elapsed
    assert "on_stop_abandoned" in err  # logged
    assert err.splitlines()[-1] == (
        "roost: received SIGTERM, shut down after abandoning 1 task that ignored cancellation")


def test_a_script_with_a_syntax_error_exits_2_naming_the_line(tmp_path: Path) -> None:
    script = write_script(tmp_path, "broken.py", "import roost\n\nroot = (\n")
    result = run([str(script)], tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"roost: {script}: syntax error on line 3: '(' was never closed"]
    assert result.stdout == ""


EMPTY_STORE = "roost: --store is empty (''), which would mean the current folder; give "
EMPTY_FOLDER = "roost: the store folder is empty (''), which would mean the current folder; give "
EMPTY_ARGUMENTS = {
    "run --store": (["run", "app.py", "--store", ""], EMPTY_STORE),
    "run target": (["run", ""], "roost: the script to run is empty (''), which would run the "
                                "current folder's app.py; give "),
    "runs": (["runs", "--store", ""], EMPTY_STORE),
    "trace": (["trace", "run-1", "--store", ""], EMPTY_STORE),
    "gates": (["gates", "--store", ""], EMPTY_STORE),
    "decide": (["decide", "run-1", "reply", "approve", "--by", "ana", "--store", ""], EMPTY_STORE),
    "console": (["console", "--store", ""], EMPTY_STORE),
    "decide --input": (["decide", "run-1", "reply", "edit", "--input", "", "--by", "ana",
                        "--store", "s"], "roost: --input is empty (''), which would mean the "),
    "console --tls-cert": (["console", "--store", "s", "--tls-cert", "", "--tls-key", "k.pem"],
                           "roost: --tls-cert is empty (''), which would mean the "),
    "console --tls-key": (["console", "--store", "s", "--tls-cert", "c.pem", "--tls-key", ""],
                          "roost: --tls-key is empty (''), which would mean the "),
    "store check": (["store", "check", ""], EMPTY_FOLDER),
    "store backup": (["store", "backup", "", "copy"], EMPTY_FOLDER),
}


@pytest.mark.parametrize(("args", "error"), EMPTY_ARGUMENTS.values(), ids=EMPTY_ARGUMENTS.keys())
def test_an_empty_path_argument_is_refused_in_one_line_instead_of_meaning_the_working_folder(
        tmp_path: Path, args: list[str], error: str) -> None:
    # The working folder holds an app.py, which `roost run ""` would run.
    marker = tmp_path / "ran.txt"
    write_script(tmp_path, "app.py", f"""\
        from pathlib import Path

        async def main(system):
            Path({str(marker)!r}).write_text("ran")
    """)

    result = subprocess.run([*MODULE, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30)

    assert (result.returncode, result.stdout) == (2, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith(error), line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["app.py"]  # nothing made or run


# --- in-process: the loader's messages ------------------------------------------------------


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The loader puts the script's folder on sys.path and the module in sys.modules: undo it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("roost_bootstrap_"):
            del sys.modules[name]


def test_a_missing_script_exits_2_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.py"
    assert cli.main(["run", str(missing), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"roost: {missing}: bootstrap script not found; check the path"]
    assert not (tmp_path / "store").exists()


@pytest.mark.usefixtures("clean_imports")
def test_a_script_without_a_root_exits_2_saying_what_to_define(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, "rootless.py", "import roost\n\nanswer = 42\n")
    assert cli.main(["run", str(script), "--store", str(tmp_path / "store")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"roost: {script}: defines no root;")
    assert "async def main(system)" in line
    assert "roost.Supervisor.spec" in line


@pytest.mark.usefixtures("clean_imports")
def test_a_root_of_the_wrong_type_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, "wrongroot.py", "root = 'app'\n")
    assert cli.main(["run", str(script), "--store", str(tmp_path / "store")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"roost: {script}: 'root' is a str, not a SupervisorSpec or "
                    "`async def main(system)`")


@pytest.mark.usefixtures("clean_imports")
def test_a_script_that_fails_while_loading_exits_2_with_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, "raising.py", "raise KeyError('config')\n")
    assert cli.main(["run", str(script), "--store", str(tmp_path / "store")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"roost: {script}: failed while loading: KeyError: 'config'"


def test_the_console_script_is_installed() -> None:
    assert ROOST.is_file()
    assert os.access(ROOST, os.X_OK)


@pytest.mark.usefixtures("clean_imports")
def test_a_module_target_that_does_not_exist_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "no_such_pkg.app:root", "--store", str(tmp_path / "store")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("roost: no_such_pkg.app: module not found")


@pytest.mark.usefixtures("clean_imports")
def test_a_module_target_without_the_attribute_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_script(tmp_path, "bootmod.py", "x = 1\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "bootmod:tree", "--store", str(tmp_path / "store")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "roost: bootmod:tree: the module has no attribute 'tree'"


@pytest.mark.usefixtures("clean_imports")
def test_a_plain_function_as_main_exits_2_asking_for_async_def(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, "plain.py", "def main(system):\n    return 1\n")
    assert cli.main(["run", str(script), "--store", str(tmp_path / "store")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"roost: {script}: 'main' is a plain function; define it as "
                    "`async def main(system)` (roost awaits it, and the process ends when it "
                    "returns)")
