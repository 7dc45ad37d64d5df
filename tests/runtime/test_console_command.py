"""Tests of roost/runtime/console_command.py and `roost run --console`: the console served by
real processes, asked over real HTTP.

`roost console --store DIR` serves a store whose system is not running; `roost run app.py
--console [HOST:]PORT` serves the live system, and keeps serving after main(system)
returns until SIGINT or SIGTERM. Both print `roost console: http://HOST:PORT/ ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import roost
from roost import Pipeline, RunStep, Step
from roost.runtime.console_command import console_address
from tests.support import without_logs

REPO = Path(__file__).resolve().parents[2]
ROOST = [sys.executable, "-m", "roost.runtime.cli"]
TOKEN = "console-test-token-0123456789"
ADDRESS = re.compile(r"roost console: http://127\.0\.0\.1:(\d+)/ \(sign in with the console "
                     r"token\)\n")


class Echo(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        return message.input


def quiet_system(store: Path) -> roost.ActorSystem:
    return roost.ActorSystem(store=store, log_format="json", log_level="error")


async def make_store(store: Path) -> None:
    """A store holding one completed run, `run-1`."""
    async with quiet_system(store) as system:
        handle = await system.pipelines.start(Pipeline("echo", [Step("echo", Echo)]), "hi",
                                              run_id="run-1")
        with anyio.fail_after(10):
            assert (await handle.result()).status == "completed"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    anyio.run(make_store, folder)
    return folder


def environment(token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ROOST_CONSOLE_TOKEN"}
    if token is not None:
        env["ROOST_CONSOLE_TOKEN"] = token
    return env


class Process:
    """A `roost` process whose stdout is read line by line as it comes (a thread each reads
    its stdout and stderr, so neither pipe fills up)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen([*ROOST, *args], cwd=REPO, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._lines: queue.Queue[str] = queue.Queue()
        self._err: list[str] = []
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_out(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)

    def _read_err(self) -> None:
        assert self.popen.stderr is not None
        self._err.extend(self.popen.stderr)

    def line(self, timeout: float = 20.0) -> str:
        """The next line of stdout, or an assertion error after `timeout` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"nothing printed within {timeout}s; stderr: "
                                 f"{''.join(self._err)}") from None

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM the process; its exit code and the rest of its stdout, and its stderr."""
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout=20)
        self._close()
        rest = [self._lines.get() for _ in range(self._lines.qsize())]
        return code, "".join(rest), "".join(self._err)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._close()

    def _close(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes started by a test; any still running at its end are killed."""
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 another socket listens on."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def start(processes: list[Process], *args: str, env: dict[str, str] | None = None) -> Process:
    process = Process(list(args), env or environment())
    processes.append(process)
    return process


def port_of(line: str) -> int:
    match = ADDRESS.fullmatch(line)
    assert match, f"not the console's address line: {line!r}"
    return int(match.group(1))


def get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, str, Any]:
    """GET `path` from the console: the status, the content type and the JSON body."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], json.load(error)


# --- roost console ---------------------------------------------------------------------------


def test_console_serves_the_runs_of_a_store_to_the_bearer_token_until_sigterm(
        store: Path, processes: list[Process]) -> None:
    process = start(processes, "console", "--store", str(store), "--port", "0")
    port = port_of(process.line())

    status, _, body = get(port, "/api/v1/runs")
    assert status == 200
    assert [run["run_id"] for run in body["items"]] == ["run-1"]
    status, content_type, problem = get(port, "/api/v1/runs", token=None)
    assert (status, content_type) == (401, "application/problem+json")
    assert problem["status"] == 401 and "Authorization: Bearer" in problem["detail"]
    code, _, err = process.stop()
    assert code == 0, err
    assert "roost: received SIGTERM, console stopped" in err


def test_sigterms_that_keep_coming_while_the_console_exits_still_end_in_exit_0(
        store: Path, processes: list[Process]) -> None:
    # A process manager may repeat its SIGTERM; one landing after the loop has closed must
    # not turn the clean exit into death by signal.
    for _ in range(3):
        process = start(processes, "console", "--store", str(store), "--port", "0")
        port_of(process.line())
        deadline = time.monotonic() + 20.0
        while process.popen.poll() is None and time.monotonic() < deadline:
            process.popen.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        code, _, err = process.stop()
        assert code == 0, err


def test_console_without_a_token_generates_one_saves_it_0600_and_prints_it_only_once(
        store: Path, processes: list[Process]) -> None:
    first = start(processes, "console", "--store", str(store), "--port", "0",
                  env=environment(token=None))
    token_line = first.line()
    port = port_of(first.line())
    token_file = store / "console.token"
    token = token_file.read_text().strip()
    assert token_line == f"console token (saved in {store}/console.token, shown once): {token}\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert get(port, "/api/v1/runs", token=token)[0] == 200
    assert first.stop()[0] == 0

    second = start(processes, "console", "--store", str(store), "--port", "0",
                   env=environment(token=None))
    port = port_of(second.line())  # the first line: no token this time
    assert get(port, "/api/v1/runs", token=token)[0] == 200
    code, out, err = second.stop()
    assert code == 0
    assert token not in out + err


def test_console_refuses_a_folder_without_a_store_and_leaves_it_alone(tmp_path: Path) -> None:
    result = subprocess.run([*ROOST, "console", "--store", str(tmp_path / "none"), "--port", "0"],
                            cwd=REPO, env=environment(), capture_output=True, text=True,
                            timeout=30)

    assert (result.returncode, result.stdout) == (1, "")
    assert without_logs(result.stderr).startswith(f"roost: StoreUnavailable: cannot open the store at "
                                    f"{str(tmp_path / 'none')!r}: there is no store in this folder")
    assert not (tmp_path / "none").exists()


@pytest.mark.anyio
async def test_console_refuses_a_store_a_live_system_holds_pointing_to_its_own_console(
        store: Path) -> None:
    async with quiet_system(store):
        result = await anyio.run_process([*ROOST, "console", "--store", str(store), "--port", "0"],
                                         cwd=REPO, env=environment(), check=False)

    stderr = result.stderr.decode()
    assert (result.returncode, result.stdout) == (1, b"")
    assert f"cannot open the store at {str(store)!r}: it is already open (by pid " \
           f"{os.getpid()})" in stderr
    assert "use that system's console: roost run app.py --console PORT" in stderr


def test_console_on_a_port_in_use_exits_1_saying_so(store: Path, busy_port: int) -> None:
    result = subprocess.run([*ROOST, "console", "--store", str(store), "--port", str(busy_port)],
                            cwd=REPO, env=environment(), capture_output=True, text=True,
                            timeout=30)

    assert (result.returncode, result.stdout) == (1, "")
    assert without_logs(result.stderr).startswith(f"roost: ConfigurationError: cannot serve the console on "
                                    f"127.0.0.1:{busy_port}: ")
    assert "choose another port or host" in result.stderr


def test_console_beyond_loopback_without_tls_warns_that_the_token_crosses_in_clear_text(
        store: Path, processes: list[Process]) -> None:
    process = start(processes, "console", "--store", str(store), "--host", "0.0.0.0",
                    "--port", "0")
    assert re.fullmatch(r"roost console: http://0\.0\.0\.0:\d+/ \(sign in with the console "
                        r"token\)\n", process.line())
    code, _, err = process.stop()
    assert code == 0
    assert "roost: warning: the console on 0.0.0.0 is not loopback and has no TLS: the token " \
           "and sessions cross the network in clear text" in err
    assert '"event": "console_without_tls"' in err  # and the log says so


def test_console_refuses_an_empty_host_instead_of_listening_on_every_interface(
        store: Path) -> None:
    result = subprocess.run([*ROOST, "console", "--store", str(store), "--host", "",
                             "--port", "0"],
                            cwd=REPO, env=environment(), capture_output=True, text=True,
                            timeout=30)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("roost: --host is empty (''), which would listen on every "
                             "interface; give the address to listen on (e.g. 127.0.0.1; 0.0.0.0 "
                             "for every interface, with TLS)\n")


def test_console_with_a_tls_certificate_but_no_key_exits_2(store: Path) -> None:
    result = subprocess.run([*ROOST, "console", "--store", str(store), "--tls-cert", "cert.pem"],
                            cwd=REPO, env=environment(), capture_output=True, text=True,
                            timeout=30)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "roost: --tls-cert and --tls-key go together; give both, or " \
                            "neither for plain HTTP\n"


# --- roost run --console ---------------------------------------------------------------------


APP = """\
    import roost


    class Idle(roost.Actor):
        async def receive(self, message):
            return None


    async def main(system):
        system.spawn(Idle, name="idle")
        print("main returned", flush=True)
"""


def test_run_with_console_serves_the_live_system_after_main_returns_until_sigterm(
        tmp_path: Path, processes: list[Process]) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(APP))
    process = start(processes, "run", str(script), "--store", str(tmp_path / "store"),
                    "--log-level", "warning", "--console", "127.0.0.1:0")
    port = port_of(process.line())  # the console starts before main(system)
    assert process.line() == "main returned\n"

    status, _, actors = get(port, "/api/v1/system/actors")
    assert status == 200
    assert "/idle" in [actor["path"] for actor in actors["items"]]
    code, _, err = process.stop()
    assert code == 0, err
    assert "roost: main(system) returned; the console keeps serving until Ctrl-C (SIGINT) or " \
           "SIGTERM" in err
    assert "roost: received SIGTERM, shut down gracefully" in err


def test_run_with_console_on_a_port_in_use_exits_1_before_main_runs(
        tmp_path: Path, busy_port: int) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(APP))
    result = subprocess.run([*ROOST, "run", str(script), "--store", str(tmp_path / "store"),
                             "--log-level", "warning", "--console", str(busy_port)],
                            cwd=REPO, env=environment(), capture_output=True, text=True,
                            timeout=30)

    assert (result.returncode, result.stdout) == (1, "")
    assert without_logs(result.stderr).startswith(f"roost: ConfigurationError: cannot serve the console on "
                                    f"127.0.0.1:{busy_port}: ")


# --- --console [HOST:]PORT -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "address"), [
    ("8470", ("127.0.0.1", 8470)),
    ("0", ("127.0.0.1", 0)),
    ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ("localhost:80", ("localhost", 80)),
    ("[::1]:8470", ("::1", 8470)),
])
def test_console_address_is_an_optional_host_and_a_port(value: str,
                                                         address: tuple[str, int]) -> None:
    assert console_address(value) == address


@pytest.mark.parametrize(("value", "message"), [
    ("http", "'http' is not a port; use a number from 0 (any free port) to 65535"),
    ("70000", "'70000' is not a port"),
    ("host:", "'' is not a port"),
    (":8470", "':8470' has no host before the ':'"),
])
def test_a_bad_console_address_says_what_to_give(value: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        console_address(value)
